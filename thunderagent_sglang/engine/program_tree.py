"""Programs on the radix tree: our tree core reports every KV change to the runtime's residency.

``ProgramTreeCore`` is SGLang's pure-Python tree core with the methods through which a node
gets, loses or moves device (FULL) and host KV overridden to also tell the runtime's
``policy.residency.Residency`` (see docs/design/program-cache.md, section 2). It is built by
SGLang's tree-core registry with the runtime handed in. ``tag_path`` puts a program's latest
sequence on the nodes of its path. All figures come from events, never from walking the tree;
``recount()`` walks it once to check them (debug mode).

Retired nodes (a terminated program's sequence passed through them, or a live program's latest
sequence left them and nothing else tags them: a superseded state) rank first for eviction
until anything uses them again: the mark holds the node's SGLang access time when it was set,
and a later access (a match or insert by any call, tagged or not) clears it. A split carries the
mark to the new parent.
"""

from __future__ import annotations

from sglang.srt.mem_cache.unified_cache.component_type import ComponentType
from sglang.srt.mem_cache.unified_cache.unified_tree_core import UnifiedTreeCore

from thunderagent_sglang.policy.eviction import host_node_key, node_key

FINAL_HEAD = "last"  # the head of a program's latest finished call
_UNTAGGED_KEY = node_key((), retired=False)  # device and host rank alike (policy.eviction)
_UNKNOWN = object()


def lengths(node) -> tuple[int, int]:
    """(device, host) FULL tokens held by a node."""
    data = node.component_data[ComponentType.FULL]
    return (0 if data.value is None else len(data.value),
            0 if data.host_value is None else len(data.host_value))


def locked(node) -> bool:
    return any(data.lock_ref > 0 for data in node.component_data)


class ProgramTreeCore(UnifiedTreeCore):
    def __init__(self, runtime, params, components):
        self.runtime = runtime  # set first: SGLang's constructor calls reset()
        self.residency = runtime.residency
        self.retired: dict[int, int] = {}  # node id -> its access time when retired
        super().__init__(params, components)
        runtime.tree = self

    # ---- KV changes, reported ------------------------------------------------------------

    def _split_node(self, key, child, split_len):
        result = super()._split_node(key, child, split_len)
        parent = result[0]
        self.residency.split(child.id, parent.id, lengths(parent), lengths(child))
        if child.id in self.retired:
            self.retired[child.id] = child.last_access_time
            self.retired[parent.id] = parent.last_access_time
        return result

    def _evict_component_and_detach_lru(self, node, comp, device_frees, host_frees,
                                        cache_actions, *args, **kwargs):
        freed = super()._evict_component_and_detach_lru(
            node, comp, device_frees, host_frees, cache_actions, *args, **kwargs)
        if comp.component_type == ComponentType.FULL:
            self.residency.release(node.id, freed[0], freed[1])
        return freed

    def commit_backup(self, node_id, host_indices, comp_xfers):
        result = super().commit_backup(node_id, host_indices, comp_xfers)
        self.residency.set_lengths(node_id, *lengths(self.node_by_id(node_id)))
        return result

    def commit_load_back(self, node_id, device_indices, kv_xfer, comp_xfers):
        result = super().commit_load_back(node_id, device_indices, kv_xfer, comp_xfers)
        for nid in kv_xfer.nodes_to_load or ():
            self.residency.set_lengths(nid, *lengths(self.node_by_id(nid)))
        return result

    def _unevict_node_on_insert(self, node, fresh_value, *args, **kwargs):
        result = super()._unevict_node_on_insert(node, fresh_value, *args, **kwargs)
        self.residency.set_lengths(node.id, *lengths(node))
        return result

    def insert_host(self, node_id, key, host_value, hash_value):
        result = super().insert_host(node_id, key, host_value, hash_value)
        if result.inserted_host_node is not None:
            for node in self.path_of(result.inserted_host_node):
                self.residency.set_lengths(node.id, *lengths(node))
        return result

    def _remove_leaf_from_parent(self, node):
        self.residency.delete(node.id)
        self.retired.pop(node.id, None)
        return super()._remove_leaf_from_parent(node)

    def reset(self):
        result = super().reset()
        self.residency.clear()
        self.retired.clear()
        return result

    # ---- eviction walks: each program's key once per walk -------------------------------

    def evict_device_start(self, component_type, request_cnt):
        self.eviction_strategy.begin_walk()
        return super().evict_device_start(component_type, request_cnt)

    def evict_device_end(self, component_type):
        try:
            return super().evict_device_end(component_type)
        finally:
            self.eviction_strategy.end_walk()

    def drive_host_eviction(self, component_type, num_tokens):
        self.eviction_strategy.begin_walk()
        try:
            return super().drive_host_eviction(component_type, num_tokens)
        finally:
            self.eviction_strategy.end_walk()

    # ---- programs on the tree ------------------------------------------------------------

    def path_of(self, node) -> list:
        """The nodes from ``node`` (or its id) up to (not including) the root, leaf first."""
        node = self.node_by_id(node) if isinstance(node, int) else node
        path = []
        while node is not None and node is not self.root_node:
            path.append(node)
            node = node.parent
        return path

    def tag_path(self, program_id: str, head, last_node) -> None:
        """The program's head now ends at ``last_node`` (a node or its id). When its latest
        finished sequence moves off a branch (a re-rendered history), the nodes of that branch
        nothing tags any more are retired: its superseded states go first
        (``--thunderagent-superseded-first``)."""
        path = self.path_of(last_node)[::-1]
        old_end = self.residency.heads(program_id).get(head) if head == FINAL_HEAD else None
        self.residency.set_path(program_id, head, [(n.id, *lengths(n)) for n in path])
        if old_end is not None and self.runtime.cfg.superseded_first:
            self._retire_superseded(old_end, {n.id for n in path})
        if not self.runtime.counted(program_id):
            self.residency.set_active(program_id, False)

    def _retire_superseded(self, old_end: int, kept: set[int]) -> None:
        for node in self.path_of(old_end):  # leaf first, up to the branch point
            if node.id in kept:
                return
            if not self.residency.is_tagged(node.id):
                self.retired[node.id] = node.last_access_time

    def retire(self, program_id: str) -> None:
        """A program ended: its nodes rank first for eviction until used again."""
        for node_id in self.residency.heads(program_id).values():
            for node in self.path_of(node_id):
                self.retired[node.id] = node.last_access_time

    def is_retired(self, node) -> bool:
        since = self.retired.get(node.id)
        if since is None:
            return False
        if node.last_access_time != since:  # used again: ranked as it is used now
            del self.retired[node.id]
            return False
        return True

    def own_nodes(self, program_id: str) -> list:
        """The tree nodes tagged by this program alone, leaf first."""
        seen, nodes, only = set(), [], frozenset((program_id,))
        for node_id in self.residency.heads(program_id).values():
            for node in self.path_of(node_id):
                if node.id not in seen and self.residency.tags(node.id) == only:
                    seen.add(node.id)
                    nodes.append(node)
        return nodes

    def movable(self, own: list) -> list:
        """Of a program's own nodes, those SGLang's eviction walk can take off the device
        without touching anything else: unlocked, and every child with device KV movable too."""
        own_ids = {n.id for n in own}
        verdict: dict[int, bool] = {}

        def can_move(node) -> bool:
            if node.id not in verdict:
                verdict[node.id] = (
                    node.id in own_ids and not locked(node)
                    and all(lengths(c)[0] == 0 or can_move(c) for c in node.children.values()))
            return verdict[node.id]

        return [n for n in own if lengths(n)[0] and can_move(n)]

    def recount(self) -> list[str]:
        """Each program whose counters differ from a walk of the live tree (debug)."""
        wrong = []
        for program in list(self.residency.programs()):
            nodes = {}
            for node_id in self.residency.heads(program).values():
                for node in self.path_of(node_id):
                    nodes[node.id] = lengths(node)
            device = sum(d for d, _ in nodes.values())
            host = sum(h for _, h in nodes.values())
            counted = (self.residency.resident_tokens(program),
                       self.residency.host_tokens(program))
            if counted != (device, host):
                wrong.append(f"{program}: counted {counted}, tree {(device, host)}")
        return wrong


class ProgramEvictionStrategy:
    """SGLang's eviction strategy interface: ``get_priority(node)``, smallest evicted first.

    (program class, program value, SGLang's own priority): with no tagged traffic
    the first two are equal for every node and SGLang's order decides.

    SGLang ranks every evictable leaf when an eviction walk starts; within one walk
    (``begin_walk`` .. ``end_walk``, which the tree core brackets) each program's key is
    computed once and read from a memo after, so ranking a leaf costs a few lookups
    whatever number of leaves a program has.
    """

    def __init__(self, base, runtime, tree: ProgramTreeCore):
        self.base = base
        self.runtime = runtime
        self.tree = tree
        self._walk: dict[str, object] | None = None  # program id -> its key, one walk

    def begin_walk(self) -> None:
        self._walk = {}

    def end_walk(self) -> None:
        self._walk = None

    def program_key(self, program_id: str):
        walk = self._walk
        if walk is None:
            return self.runtime.eviction_key(program_id)
        key = walk.get(program_id, _UNKNOWN)
        if key is _UNKNOWN:
            key = walk[program_id] = self.runtime.eviction_key(program_id)
        return key

    def get_priority(self, node):
        retired = node.id in self.tree.retired and self.tree.is_retired(node)
        tags = self.runtime.residency.tag_names(node.id)
        if not tags and not retired:  # the common case, fast
            return (*_UNTAGGED_KEY, self.base.get_priority(node))
        first = self.runtime.evict_first
        if first is not None and tags == [first]:
            return (-1, 0.0, self.base.get_priority(node))
        keys = [key for key in map(self.program_key, tags) if key is not None]
        if lengths(node)[0] == 0:  # only in the host tier: ranked for host eviction
            return (*host_node_key(bool(keys), retired), self.base.get_priority(node))
        return (*node_key(keys, retired), self.base.get_priority(node))
