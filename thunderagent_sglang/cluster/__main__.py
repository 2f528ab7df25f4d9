"""``python -m thunderagent_sglang.cluster up --replicas N [--address ADDR] -- <server flags>``,
``cluster status`` and ``cluster down``: our replicas and router as Ray actors."""

from __future__ import annotations

import argparse
import json
import sys

from thunderagent_sglang.cluster.spec import FleetSpec, SpecError

DEFAULTS = FleetSpec(replicas=1)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m thunderagent_sglang.cluster",
        description="Run a fleet of ThunderAgent-SGLang replicas and their router on a Ray "
        "cluster: each replica is a Ray actor (one placement-group bundle) that launches our "
        "server on its node and is restarted by Ray when it or its server dies; the router "
        "is one more actor. Clients use the one URL 'up' prints.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(q):
        q.add_argument("--name", default=DEFAULTS.name,
                       help="the fleet's name (several fleets can share a cluster; default "
                       "'default')")
        q.add_argument("--address", default=None,
                       help="the Ray cluster (ray://... or HOST:PORT). Default: the one 'up' "
                       "used, else the cluster running on this machine; 'up' starts a local "
                       "one when none runs")
        q.add_argument("--log-dir", default=DEFAULTS.log_dir,
                       help="where each node keeps the fleet's logs (LOG_DIR/NAME/); this "
                       f"machine also keeps the fleet's address there (default {DEFAULTS.log_dir})")

    u = sub.add_parser("up", help="start the replicas and the router; print the URL",
                       description="Start N replicas and the router. Everything after '--' "
                       "goes to each replica's python -m thunderagent_sglang.launch_server "
                       "(not --host/--port: the cluster picks them).")
    common(u)
    u.add_argument("--replicas", type=int, required=True, help="how many servers")
    u.add_argument("--cpus-per-replica", type=float, default=DEFAULTS.cpus_per_replica,
                   help="CPUs in each replica's bundle (default 1)")
    u.add_argument("--gpus-per-replica", type=int, default=None,
                   help="GPUs in each replica's bundle (default: the server's --tp-size on a "
                   "cluster with GPUs, none on a CPU cluster)")
    u.add_argument("--max-restarts", type=int, default=DEFAULTS.max_restarts,
                   help="how often Ray restarts a replica whose actor or server died "
                   "(default 3)")
    u.add_argument("--replica-port", type=int, default=DEFAULTS.replica_port,
                   help="replica i listens on this + i when free (default 30000)")
    u.add_argument("--router-port", type=int, default=DEFAULTS.router_port,
                   help="the router's port when free (default 30010)")
    u.add_argument("--host", default=None,
                   help="the address servers and router bind (default: each node's Ray "
                   "address). Set --api-key in the server flags on an untrusted network: the "
                   "router then asks clients for it too")
    u.add_argument("--start-timeout", type=float, default=DEFAULTS.start_timeout_s,
                   help="seconds a replica's server may take to answer (default 900)")
    u.add_argument("--placement-strategy", default=DEFAULTS.strategy,
                   choices=("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"),
                   help="how bundles go on nodes (default SPREAD: across nodes when it can)")
    u.add_argument("--router-arg", action="append", default=[], metavar="FLAG",
                   help="one more router flag, e.g. --router-arg=--migration=off (repeatable)")

    s = sub.add_parser("status", help="list the router and replicas (node, URL, health, "
                       "programs, restarts)")
    common(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    d = sub.add_parser("down", help="stop the replicas and router (and the local Ray cluster "
                       "'up' started, when nothing else uses it)")
    common(d)
    return p


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1:]
    return argv, []


def _print_status(report: dict) -> None:
    print(f"fleet {report['fleet']}: {report['url']}  (router on node "
          f"{report['router']['node_ip']}, log {report['router']['log']})")
    print(f"{'replica':<22} {'state':<24} {'node':<16} {'url':<28} {'programs':>8} "
          f"{'restarts':>8}")
    for r in report["replicas"]:
        print(f"{r['name']:<22} {str(r['state'])[:24]:<24} {str(r.get('node_ip', '')):<16} "
              f"{str(r.get('url', '')):<28} {str(r.get('programs')):>8} {r['restarts']:>8}")


def main(argv: list[str] | None = None) -> int:
    ours, server_args = _split(list(sys.argv[1:] if argv is None else argv))
    args = parser().parse_args(ours)
    try:
        from thunderagent_sglang.cluster import control
    except ImportError as exc:
        print(f"cluster: Ray is not installed ({exc}); pip install -e '.[ray]'", file=sys.stderr)
        return 2
    try:
        if args.command == "up":
            spec = FleetSpec(
                replicas=args.replicas, server_args=tuple(server_args), name=args.name,
                cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
                max_restarts=args.max_restarts, replica_port=args.replica_port,
                router_port=args.router_port, host=args.host,
                start_timeout_s=args.start_timeout, log_dir=args.log_dir,
                strategy=args.placement_strategy, router_args=tuple(args.router_arg))
            state = control.up(spec, args.address)
            print(state["url"])
        elif args.command == "status":
            report = control.status(args.name, args.address, args.log_dir)
            print(json.dumps(report, indent=1)) if args.json else _print_status(report)
        else:
            control.down(args.name, args.address, args.log_dir)
    except SpecError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 2
    except control.ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
