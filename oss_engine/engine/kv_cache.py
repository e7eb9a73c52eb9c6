"""KVCacheManager: which physical KV blocks each request uses, per cache group, with prefix caching.

Pure Python, no tensors. Legend: S block size (tokens per block), W sliding window, N blocks of a group.
Logical block i of a request holds positions [i*S, (i+1)*S); its physical id indexes the runner's
[N, S, K, hd] tensors of that group.

Groups. gpt-oss alternates full-attention and sliding-window layers; each group ("full_attention",
"sliding_attention": the layer_types names) has its own pool of block ids (its own tensors). A query at
position i of a sliding layer sees keys j with i - W < j <= i, so a sliding request only keeps the blocks
covering W - 1 positions before the step's first query plus the step's new tokens; blocks entirely before
that are released, and their entries in the request's list become None (the list stays indexed by
logical block; block tables show 0 there, a placeholder the window mask never reads).

Prefix caching (vLLM v1 semantics). Every FULL block gets a chained hash,
hash_i = blake2b-128(hash_{i-1} || tokens of block i as 8-byte little-endian ints), so equal hashes mean
equal whole prefixes. Each group maps hash -> block. A block whose ref count drops to 0 goes to the tail of
its group's LRU free list but keeps its hash (still findable); allocation takes the head (least recently
freed), dropping its hash. A prefix hit on a free cached block takes it out of the free list in O(1).

Invariants (checked by `check_accounting`), per group: every block is either free (on the free list,
ref count 0) or used (ref count = number of live requests holding it), never both; `hash -> block` only
points at a block whose recorded hash is that hash, and a recorded hash is always in the map.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass

from ..config import LAYER_FULL, LAYER_SLIDING


@dataclass(frozen=True)
class GroupSpec:
    name: str  # LAYER_FULL | LAYER_SLIDING
    num_blocks: int
    window: int | None  # W for sliding attention; None for full attention


@dataclass(frozen=True)
class PrefixHit:
    num_tokens: int  # a multiple of S, <= len(token_ids) - 1
    blocks: dict[str, list[int | None]]  # per group, num_tokens // S logical blocks; None: not needed (sliding)


@dataclass(frozen=True)
class PrefixCacheStats:
    queries: int  # tokens looked up by find_prefix
    hits: int  # of which found cached


def hash_block(parent: bytes, tokens: list[int]) -> bytes:
    """The chained hash of one full block: deterministic across processes (no Python hash())."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(struct.pack(f"<{len(tokens)}q", *tokens))
    return h.digest()


def first_needed_block(window: int | None, first_query: int, block_size: int) -> int:
    """The lowest logical block a step whose first query sits at `first_query` still reads.

    Full attention: 0. Sliding: the query at position q reads keys down to q - W + 1.
    Worked example: W=8, S=4, first_query=13 -> first key 6 -> block 6 // 4 = 1 (positions 4..7) is
    needed, block 0 (positions 0..3) is not.
    """
    if window is None:
        return 0
    return max(0, first_query - window + 1) // block_size


class _BlockPool:
    """One group's blocks: ref counts, the LRU free list, the hash map."""

    def __init__(self, spec: GroupSpec):
        self.spec = spec
        self.ref = [0] * spec.num_blocks
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(spec.num_blocks))  # head = LRU
        self.block_hash: list[bytes | None] = [None] * spec.num_blocks
        self.by_hash: dict[bytes, int] = {}

    def take_new(self) -> int:
        b, _ = self.free.popitem(last=False)
        h = self.block_hash[b]
        if h is not None:  # evict: the cached content is about to be overwritten
            del self.by_hash[h]
            self.block_hash[b] = None
        self.ref[b] = 1
        return b

    def take_cached(self, b: int) -> None:
        if self.ref[b] == 0:
            del self.free[b]
        self.ref[b] += 1

    def release(self, b: int) -> None:
        self.ref[b] -= 1
        if self.ref[b] == 0:
            self.free[b] = None  # tail: most recently freed, evicted last

    def register(self, b: int, h: bytes) -> None:
        """Make full block b findable by h, unless h already names another block (that one stays)."""
        if h not in self.by_hash and self.block_hash[b] is None:
            self.by_hash[h] = b
            self.block_hash[b] = h


@dataclass(eq=False)
class _RequestBlocks:
    blocks: dict[str, list[int | None]]  # per group, by logical block; None = released (sliding only)
    num_released: dict[str, int]  # per group: logical blocks [0, n) are all None
    num_registered: int  # logical blocks [0, n) have been offered to the hash maps


class KVCacheManager:
    def __init__(self, groups: list[GroupSpec], block_size: int, enable_prefix_caching: bool = True):
        if not groups:
            raise ValueError("at least one cache group is needed")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        for g in groups:
            if g.name not in (LAYER_FULL, LAYER_SLIDING):
                raise ValueError(f"group name must be {LAYER_FULL!r} or {LAYER_SLIDING!r}, got {g.name!r}")
            if (g.window is None) != (g.name == LAYER_FULL) or (g.window is not None and g.window < 1):
                raise ValueError(f"group {g.name!r}: window {g.window!r} (None for full, >= 1 for sliding)")
            if g.num_blocks < 1:
                raise ValueError(f"group {g.name!r}: num_blocks must be >= 1, got {g.num_blocks}")
        if len({g.name for g in groups}) != len(groups):
            raise ValueError(f"duplicate group names in {[g.name for g in groups]}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._pools = {g.name: _BlockPool(g) for g in groups}
        self._requests: dict[str, _RequestBlocks] = {}  # requests holding blocks
        self._hashes: dict[str, list[bytes]] = {}  # per request: its hash chain so far (also while waiting)
        self._queries = self._hits = 0

    # ---- prefix lookup ------------------------------------------------------------------------------

    def _chain(self, request_id: str, token_ids: list[int], num_blocks: int) -> list[bytes]:
        """The request's hash chain extended to `num_blocks` full blocks (tokens only ever get appended)."""
        chain = self._hashes.setdefault(request_id, [])
        S = self.block_size
        for i in range(len(chain), num_blocks):
            chain.append(hash_block(chain[-1] if chain else b"", token_ids[i * S:(i + 1) * S]))
        return chain

    def find_prefix(self, request_id: str, token_ids: list[int]) -> PrefixHit:
        """The longest usable cached prefix in whole blocks, leaving at least one token to compute."""
        if not self.enable_prefix_caching:
            return PrefixHit(0, {g: [] for g in self._pools})
        S = self.block_size
        hashes = self._chain(request_id, token_ids, max(len(token_ids) - 1, 0) // S)
        k = len(hashes)
        full = self._pools.get(LAYER_FULL)
        if full is not None:
            k = next((i for i, h in enumerate(hashes) if h not in full.by_hash), k)
        sliding = self._pools.get(LAYER_SLIDING)
        if sliding is not None:
            k = self._sliding_hit_blocks(sliding, hashes, k)
        blocks: dict[str, list[int | None]] = {}
        for name, pool in self._pools.items():
            first = first_needed_block(pool.spec.window, k * S, S)
            blocks[name] = [None] * first + [pool.by_hash[h] for h in hashes[first:k]]
        return PrefixHit(k * S, blocks)

    def record_prefix_query(self, num_prompt_tokens: int, hit: PrefixHit) -> None:
        """Count one admitted request's lookup for metrics (retries of a request that could not be admitted
        yet are not counted)."""
        if self.enable_prefix_caching:
            self._queries += num_prompt_tokens
            self._hits += hit.num_tokens

    def _sliding_hit_blocks(self, pool: _BlockPool, hashes: list[bytes], limit: int) -> int:
        """The largest k <= limit such that the sliding blocks a k-block hit still needs are all cached.

        A hit of k blocks needs logical blocks [first(k), k), first(k) = first_needed_block(W, k*S, S).
        Scan down from limit - 1 keeping the run [j, top) of consecutive cached blocks: top succeeds once
        j <= first(top). first() never decreases, so if a run's top fails (a miss at j - 1 >= first(top)),
        every lower top t of that run needs block j - 1 too (first(t) <= j - 1 < t); the next candidate top
        is the miss itself.
        Example W=8, S=4, limit=25, blocks 20 and 22 missing: top=25 needs [23, 25): j reaches 23 -> k=25.
        With only 23 missing: top=25 fails at the miss, top=23 needs [21, 23): j reaches 21 -> k=23.
        """
        S, W = self.block_size, pool.spec.window
        top = j = limit  # invariant: logical blocks [j, top) are all cached
        while j > first_needed_block(W, top * S, S):
            j -= 1
            if hashes[j] not in pool.by_hash:
                top = j
        return top  # ends by j = 0 at the latest (first() >= 0); top == 0 is the empty hit

    def prefix_cache_stats(self) -> PrefixCacheStats:
        """Tokens queried / hit, counted once per admitted request (nothing counted when disabled)."""
        return PrefixCacheStats(self._queries, self._hits)

    def reset_prefix_cache(self) -> int:
        """Forget the hashes of every free block (used blocks keep theirs); returns how many were dropped."""
        dropped = 0
        for pool in self._pools.values():
            for b in pool.free:
                h = pool.block_hash[b]
                if h is not None:
                    del pool.by_hash[h]
                    pool.block_hash[b] = None
                    dropped += 1
        return dropped

    # ---- allocation ---------------------------------------------------------------------------------

    def allocate(self, request_id: str, token_ids: list[int], num_computed: int, num_new: int,
                 hit: PrefixHit | None = None) -> bool:
        """Blocks for positions [0, num_computed + num_new) in every group, or False and no change at all.

        A request's first call may pass `hit` (from find_prefix just before; num_computed == hit.num_tokens).
        Sliding blocks wholly before num_computed - W + 1 are released first (they count as free for the
        all-or-nothing check). Afterwards every block full at num_computed + num_new is registered by hash,
        so even a request scheduled later in the same step can hit it (the runner writes all of a step's
        K/V before any attention reads).
        """
        S, end = self.block_size, num_computed + num_new
        if num_computed < 0 or num_new < 0:
            raise ValueError(f"negative token counts: num_computed={num_computed}, num_new={num_new}")
        req = self._requests.get(request_id)
        if req is not None and hit is None and self._already_covered(req, num_computed, end):
            self._register(request_id, req, token_ids, min(end, len(token_ids)) // S)  # a decode step, mostly
            return True
        if req is None:
            req = self._first_state(request_id, token_ids, num_computed, hit)
        elif hit is not None and hit.num_tokens > 0:
            raise ValueError(f"request {request_id!r} already holds blocks; a prefix hit is for its first call")
        elif num_computed > len(next(iter(req.blocks.values()))) * S:
            raise ValueError(f"request {request_id!r}: num_computed {num_computed} is beyond its blocks")
        first = {name: first_needed_block(p.spec.window, num_computed, S) for name, p in self._pools.items()}
        for name, n in req.num_released.items():
            if first[name] < n:
                raise ValueError(f"request {request_id!r}: position {num_computed} needs released blocks")
        new_request = request_id not in self._requests
        if not self._fits(req, first, math.ceil(end / S), new_request):
            return False
        for name, pool in self._pools.items():
            held = req.blocks[name]
            if new_request:
                for b in held:
                    if b is not None:
                        pool.take_cached(b)
            for i in range(req.num_released[name], first[name]):
                if held[i] is not None:
                    pool.release(held[i])
                    held[i] = None
            req.num_released[name] = max(req.num_released[name], first[name])
            held.extend(pool.take_new() for _ in range(math.ceil(end / S) - len(held)))
        self._requests[request_id] = req
        self._register(request_id, req, token_ids, min(end, len(token_ids)) // S)
        return True

    def _already_covered(self, req: _RequestBlocks, num_computed: int, end: int) -> bool:
        """Whether `req` holds blocks up to `end` in every group and has nothing to release first: then
        allocate only registers newly full blocks (what the general path would do, without its checks)."""
        S = self.block_size
        for name, pool in self._pools.items():
            held = req.blocks[name]
            if len(held) * S < end or first_needed_block(pool.spec.window, num_computed, S) != req.num_released[name]:
                return False
        return True

    def _first_state(self, request_id: str, token_ids: list[int], num_computed: int,
                     hit: PrefixHit | None) -> _RequestBlocks:
        """The state a first allocate starts from: empty, or the hit's blocks (checked to be still cached)."""
        n = 0 if hit is None else hit.num_tokens
        if num_computed != n:
            raise ValueError(f"request {request_id!r}: a first allocate has num_computed {num_computed} == "
                             f"the prefix hit's {n} tokens")
        k = n // self.block_size
        blocks: dict[str, list[int | None]] = {name: [] for name in self._pools}
        if k:
            hashes = self._chain(request_id, token_ids, k)
            for name, pool in self._pools.items():
                got = list(hit.blocks[name])
                if len(got) != k or any(b is not None and pool.block_hash[b] != hashes[i] for i, b in enumerate(got)):
                    raise ValueError(f"request {request_id!r}: stale prefix hit in {name!r}; call allocate "
                                     f"right after find_prefix")
                blocks[name] = got
        released = {name: next((i for i, b in enumerate(blocks[name]) if b is not None), k) for name in self._pools}
        return _RequestBlocks(blocks, released, num_registered=k)

    def _fits(self, req: _RequestBlocks, first: dict[str, int], num_blocks: int, new_request: bool) -> bool:
        """Whether every group can give `req` blocks up to `num_blocks`, counting what the step frees and
        the free-but-cached hit blocks it takes out of the free list."""
        for name, pool in self._pools.items():
            held = req.blocks[name]
            available = len(pool.free)
            if new_request:
                available -= sum(1 for b in held if b is not None and pool.ref[b] == 0)
            available += sum(1 for i in range(req.num_released[name], first[name])
                             if held[i] is not None and pool.ref[held[i]] == 1)
            if num_blocks - len(held) > available:
                return False
        return True

    def _register(self, request_id: str, req: _RequestBlocks, token_ids: list[int], num_full: int) -> None:
        if not self.enable_prefix_caching or num_full <= req.num_registered:
            return
        hashes = self._chain(request_id, token_ids, num_full)
        for name, pool in self._pools.items():
            held = req.blocks[name]
            for i in range(req.num_registered, num_full):
                if held[i] is not None:
                    pool.register(held[i], hashes[i])
        req.num_registered = num_full

    def free(self, request_id: str) -> None:
        """Release all of a request's blocks, tail first (so its tail is evicted before its head).
        Unknown ids are ignored. Also forgets the request's hash chain."""
        self._hashes.pop(request_id, None)
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        for name, pool in self._pools.items():
            for b in reversed(req.blocks[name]):
                if b is not None:
                    pool.release(b)

    def release_out_of_window(self, request_id: str, next_query: int) -> None:
        """Release the sliding blocks that no query at or after `next_query` reads (called after each step,
        so between steps a sliding layer holds at most W + S tokens of a request; during a step it also holds
        that step's new tokens)."""
        req = self._requests.get(request_id)
        if req is None:
            return
        for name, pool in self._pools.items():
            first = first_needed_block(pool.spec.window, next_query, self.block_size)
            held = req.blocks[name]
            for i in range(req.num_released[name], min(first, len(held))):
                if held[i] is not None:
                    pool.release(held[i])
                    held[i] = None
            req.num_released[name] = max(req.num_released[name], min(first, len(held)))

    # ---- views --------------------------------------------------------------------------------------

    def block_tables(self, request_id: str) -> dict[str, list[int]]:
        """Per group, physical ids by logical block; released sliding entries read 0 (never attended)."""
        return {name: [0 if b is None else b for b in held] for name, held in self._requests[request_id].blocks.items()}

    def held_blocks(self, request_id: str, group: str) -> list[int | None]:
        """A copy of the request's list in one group, None where a sliding block was released."""
        return list(self._requests[request_id].blocks[group])

    def group_names(self) -> list[str]:
        return list(self._pools)

    def num_blocks(self, group: str) -> int:
        return self._pools[group].spec.num_blocks

    def num_free_blocks(self, group: str) -> int:
        return len(self._pools[group].free)

    def num_used_blocks(self, group: str) -> int:
        return self.num_blocks(group) - self.num_free_blocks(group)

    def usage(self) -> float:
        """Used / total of the fullest group."""
        return max(self.num_used_blocks(g) / self.num_blocks(g) for g in self._pools)

    def blocks_needed(self, num_tokens: int, step_tokens: int = 1) -> dict[str, int]:
        """Blocks a request of `num_tokens` tokens holds at most in each group when no step computes more
        than `step_tokens` of its tokens.

        Full: ceil(n/S). Sliding: a step with first query c and m new tokens holds the blocks covering
        positions [c - W + 1, c + m), a span of L = W - 1 + m tokens; a span of L tokens starting at offset
        o within a block touches floor((o + L - 1)/S) + 1 blocks, at most ceil((L - 1)/S) + 1 (o = S - 1).
        So min(ceil(n/S), ceil((W + m - 2)/S) + 1). Example W=8, S=4, m=1: ceil(7/4) + 1 = 3 blocks
        (12 tokens = W + S). The default m=1 is the least any schedule needs (one token a step), so a request
        whose figure exceeds a group's pool can never run.
        """
        S = self.block_size
        out = {}
        for name, pool in self._pools.items():
            n = math.ceil(num_tokens / S)
            W = pool.spec.window
            out[name] = n if W is None else min(n, math.ceil((W + step_tokens - 2) / S) + 1)
        return out

    # ---- debug invariant ----------------------------------------------------------------------------

    def check_accounting(self, live_request_ids) -> None:
        """Raise AssertionError naming the first broken invariant (see the module docstring)."""
        live = set(live_request_ids)
        known = set(self._requests)
        assert known == live, (f"KV manager knows requests not live: {sorted(known - live)}; "
                               f"live requests unknown to it: {sorted(live - known)}")
        lengths = {rid: {len(h) for h in r.blocks.values()} for rid, r in self._requests.items()}
        bad = {rid: n for rid, n in lengths.items() if len(n) != 1}
        assert not bad, f"requests whose groups hold different numbers of logical blocks: {bad}"
        for name, pool in self._pools.items():
            self._check_group(name, pool)

    def _check_group(self, name: str, pool: _BlockPool) -> None:
        N = pool.spec.num_blocks
        free = list(pool.free)
        assert len(free) == len(set(free)), f"{name}: duplicate blocks on the free list"
        assert all(0 <= b < N for b in free), f"{name}: free list holds ids outside [0, {N})"
        holders: Counter[int] = Counter()
        for rid, req in self._requests.items():
            held = [b for b in req.blocks[name] if b is not None]
            twice = [b for b, c in Counter(held).items() if c > 1]
            assert not twice, f"{name}: request {rid!r} holds blocks {twice} more than once"
            assert all(b is None for b in req.blocks[name][:req.num_released[name]]), \
                f"{name}: request {rid!r} holds a block below its released mark {req.num_released[name]}"
            holders.update(held)
        free_set = set(free)
        for b in range(N):
            rc, on_free = pool.ref[b], b in free_set
            assert rc >= 0, f"{name}: block {b} has negative ref count {rc}"
            assert not (on_free and rc > 0), f"{name}: block {b} is on the free list with ref count {rc}"
            assert on_free or rc > 0, f"{name}: block {b} is neither free nor referenced (leaked)"
            assert rc == holders[b], f"{name}: block {b} has ref count {rc} but {holders[b]} live holders"
        for h, b in pool.by_hash.items():
            assert pool.block_hash[b] == h, f"{name}: hash map points at block {b} whose hash differs"
        for b, h in enumerate(pool.block_hash):
            assert h is None or pool.by_hash.get(h) == b, f"{name}: block {b} has a hash the map does not know"
        if not self.enable_prefix_caching:
            assert not pool.by_hash, f"{name}: hashes registered with prefix caching disabled"
