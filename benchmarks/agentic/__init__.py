"""The agent-serving benchmark: workload, trace format, player, systems, runner, report, plots, calibration."""
