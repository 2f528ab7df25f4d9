"""Programs on the radix tree: our tree core reports every KV change to the residency counters.

``ProgramTreeCore`` is SGLang's pure-Python tree core with the methods through
which a node gets, loses or moves device (FULL) and host KV overridden to also
tell ``policy.residency.Residency`` (see docs/design/program-cache.md, section 2).
``tag_path`` puts a program's latest sequence on the nodes of its path. All
figures come from events, never from walking the tree; ``recount()`` walks it
once to check them (debug mode).
"""

from __future__ import annotations

import contextlib

from sglang.srt.mem_cache.unified_cache.component_type import ComponentType
from sglang.srt.mem_cache.unified_cache.unified_tree_core import UnifiedTreeCore

from thunderagent_sglang.policy.eviction import host_node_key, node_key
from thunderagent_sglang.policy.residency import Residency

BACKEND_NAME = "thunderagent"
FINAL_HEAD = "last"  # the head of a program's latest finished call
RESIDENCY = Residency()  # one per scheduler process
RETIRED: set[int] = set()  # nodes a terminated program's sequence passed through
_trees: list = []  # the tree core built here (one per scheduler)
_UNTAGGED_KEY = node_key((), retired=False)  # device and host rank alike (policy.eviction)
_first: list = []  # a program whose own nodes rank before everything (while evicting it)


def lengths(node) -> tuple[int, int]:
    """(device, host) FULL tokens held by a node."""
    data = node.component_data[ComponentType.FULL]
    return (0 if data.value is None else len(data.value),
            0 if data.host_value is None else len(data.host_value))


class ProgramTreeCore(UnifiedTreeCore):
    def __init__(self, params, components):
        super().__init__(params, components)
        _trees[:] = [self]

    def _split_node(self, key, child, split_len):
        result = super()._split_node(key, child, split_len)
        RESIDENCY.split(child.id, result[0].id, lengths(result[0]), lengths(child))
        return result

    def _evict_component_and_detach_lru(self, node, comp, device_frees, host_frees,
                                        cache_actions, *args, **kwargs):
        freed = super()._evict_component_and_detach_lru(
            node, comp, device_frees, host_frees, cache_actions, *args, **kwargs)
        if comp.component_type == ComponentType.FULL:
            RESIDENCY.release(node.id, freed[0], freed[1])
        return freed

    def commit_backup(self, node_id, host_indices, comp_xfers):
        result = super().commit_backup(node_id, host_indices, comp_xfers)
        RESIDENCY.set_lengths(node_id, *lengths(self.node_by_id(node_id)))
        return result

    def commit_load_back(self, node_id, device_indices, kv_xfer, comp_xfers):
        result = super().commit_load_back(node_id, device_indices, kv_xfer, comp_xfers)
        for nid in kv_xfer.nodes_to_load or ():
            RESIDENCY.set_lengths(nid, *lengths(self.node_by_id(nid)))
        return result

    def _unevict_node_on_insert(self, node, fresh_value, *args, **kwargs):
        result = super()._unevict_node_on_insert(node, fresh_value, *args, **kwargs)
        RESIDENCY.set_lengths(node.id, *lengths(node))
        return result

    def insert_host(self, node_id, key, host_value, hash_value):
        result = super().insert_host(node_id, key, host_value, hash_value)
        if result.inserted_host_node is not None:
            for node in path_to_root(self, self.node_by_id(result.inserted_host_node)):
                RESIDENCY.set_lengths(node.id, *lengths(node))
        return result

    def _remove_leaf_from_parent(self, node):
        RESIDENCY.delete(node.id)
        RETIRED.discard(node.id)
        return super()._remove_leaf_from_parent(node)

    def reset(self):
        result = super().reset()
        RESIDENCY.clear()
        RETIRED.clear()
        return result


def tree():
    """The tree core built in this process, or None."""
    return _trees[0] if _trees else None


@contextlib.contextmanager
def evicting_first(program_id: str):
    """While inside, the nodes tagged by this program alone are the first eviction
    candidates on both tiers (SGLang ranks when an eviction walk starts)."""
    _first[:] = [program_id]
    try:
        yield
    finally:
        _first.clear()


def tree_core_factory(params, components):
    return ProgramTreeCore(params, components)


def path_to_root(tree, node) -> list:
    """The nodes from ``node`` up to (not including) the root, leaf first."""
    path = []
    while node is not None and node is not tree.root_node:
        path.append(node)
        node = node.parent
    return path


def tag_path(tree, program_id: str, head, last_node) -> None:
    """The program's head now ends at ``last_node`` (a node or its id)."""
    node = tree.node_by_id(last_node) if isinstance(last_node, int) else last_node
    path = path_to_root(tree, node)[::-1]
    RESIDENCY.set_path(program_id, head, [(n.id, *lengths(n)) for n in path])


def retire(program_id: str) -> None:
    """A program ended: its nodes become the first eviction candidates, its tags go."""
    if _trees:
        tree = _trees[0]
        for node_id in RESIDENCY.heads(program_id).values():
            RETIRED.update(n.id for n in path_to_root(tree, tree.node_by_id(node_id)))
    RESIDENCY.drop_program(program_id)


class ProgramEvictionStrategy:
    """SGLang's eviction strategy interface: ``get_priority(node)``, smallest evicted first.

    (program class, program value, SGLang's own priority): with no tagged traffic
    the first two are equal for every node and SGLang's order decides.
    """

    def __init__(self, base, program_state):
        self.base = base
        self.program_state = program_state  # program id -> policy.eviction.ProgramState | None

    def get_priority(self, node):
        if node.id not in RETIRED and not RESIDENCY.is_tagged(node.id):  # the common case, fast
            return (*_UNTAGGED_KEY, self.base.get_priority(node))
        tags = RESIDENCY.tags(node.id)
        if _first and tags == frozenset(_first):
            return (-1, 0.0, self.base.get_priority(node))
        keys = []
        for program_id in tags:
            key = self.program_state(program_id)
            if key is not None:
                keys.append(key)
        retired = node.id in RETIRED
        if lengths(node)[0] == 0:  # only in the host tier: ranked for host eviction
            return (*host_node_key(bool(keys), retired), self.base.get_priority(node))
        return (*node_key(keys, retired), self.base.get_priority(node))


def recount() -> list[str]:
    """Each program whose counters differ from a walk of the live tree (debug)."""
    if not _trees:
        return []
    tree, wrong = _trees[0], []
    for program in list(RESIDENCY.programs()):
        nodes = {}
        for node_id in RESIDENCY.heads(program).values():
            for node in path_to_root(tree, tree.node_by_id(node_id)):
                nodes[node.id] = lengths(node)
        device = sum(d for d, _ in nodes.values())
        host = sum(h for _, h in nodes.values())
        counted = (RESIDENCY.resident_tokens(program), RESIDENCY.host_tokens(program))
        if counted != (device, host):
            wrong.append(f"{program}: counted {counted}, tree {(device, host)}")
    return wrong
