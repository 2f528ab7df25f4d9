"""Environment and snapshot records on disk, so that a restarted sidecar keeps its environments.

``ROOT/records/envs/ID.json`` holds an environment's spec, creation time, ports and layers;
``ROOT/records/layers/NAME.json`` a snapshot layer's origin. They are written when the thing is
made and removed when it is destroyed, each by an atomic rename. Only backends whose state
outlives the sidecar (the local backend: workspaces are files) are recorded. Never visible in a
sandbox.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from thunderagent_sglang.sidecar.envs import EnvSpec

log = logging.getLogger("thunderagent_sglang.sidecar")


@dataclasses.dataclass(frozen=True)
class SavedEnv:
    env_id: str
    spec: EnvSpec
    created_wall: float
    ports: dict[str, int]
    layers: list[str]


@dataclasses.dataclass(frozen=True)
class SavedLayer:
    name: str
    backend: str
    base_dir: str | None
    image: str | None
    chain: tuple[str, ...]
    program_id: str


class Records:
    def __init__(self, root: str):
        self.envs_dir = os.path.join(root, "records", "envs")
        self.layers_dir = os.path.join(root, "records", "layers")
        for d in (self.envs_dir, self.layers_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def save_env(self, saved: SavedEnv) -> None:
        _write(os.path.join(self.envs_dir, saved.env_id + ".json"), {
            "env_id": saved.env_id, "spec": dataclasses.asdict(saved.spec),
            "created_wall": saved.created_wall, "ports": saved.ports, "layers": saved.layers})

    def drop_env(self, env_id: str) -> None:
        _remove(os.path.join(self.envs_dir, env_id + ".json"))

    def save_layer(self, saved: SavedLayer) -> None:
        _write(os.path.join(self.layers_dir, saved.name + ".json"), dataclasses.asdict(saved))

    def drop_layer(self, name: str) -> None:
        _remove(os.path.join(self.layers_dir, name + ".json"))

    def envs(self) -> list[SavedEnv]:
        found = []
        for raw in _read_all(self.envs_dir):
            try:
                spec = dict(raw["spec"])
                spec["ports"] = tuple(spec.get("ports", ()))
                found.append(SavedEnv(raw["env_id"], EnvSpec(**spec), float(raw["created_wall"]),
                                      {k: int(v) for k, v in raw["ports"].items()},
                                      list(raw["layers"])))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("an environment record is unreadable (%s): it is dropped", exc)
        return found

    def layers(self) -> list[SavedLayer]:
        found = []
        for raw in _read_all(self.layers_dir):
            try:
                found.append(SavedLayer(**{**raw, "chain": tuple(raw["chain"])}))
            except (KeyError, TypeError) as exc:
                log.warning("a snapshot record is unreadable (%s): it is dropped", exc)
        return found

    def keep_only(self, env_ids: set[str], layer_names: set[str]) -> None:
        """Removes every record but these (the ones a restart could not restore)."""
        for directory, keep in ((self.envs_dir, env_ids), (self.layers_dir, layer_names)):
            for name in os.listdir(directory):
                if name.removesuffix(".json") not in keep:
                    _remove(os.path.join(directory, name))


def _write(path: str, value: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _read_all(directory: str) -> list[dict]:
    found = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                found.append(json.load(f))
        except (OSError, ValueError) as exc:
            log.warning("record %s is unreadable (%s): it is dropped", name, exc)
    return found
