"""KVCacheManager: block accounting, prefix caching (hash chain, LRU eviction), sliding-window release.

A `Shadow` plays the runner: it records which token each (group, block, row) slot holds after a step
writes, and checks that every position a step's queries read (all earlier ones for full attention, the
window for sliding) holds the request's own token. That is the end-to-end property prefix caching and
block release must keep.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct

import pytest

from oss_engine.engine.kv_cache import GroupSpec, KVCacheManager, PrefixCacheStats, hash_block

FULL, SLIDING = "full_attention", "sliding_attention"


def make(full: int | None = 64, sliding: int | None = 64, S: int = 4, W: int = 8, caching: bool = True):
    groups = []
    if full is not None:
        groups.append(GroupSpec(FULL, full, None))
    if sliding is not None:
        groups.append(GroupSpec(SLIDING, sliding, W))
    return KVCacheManager(groups, S, caching)


def toks(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(n)]


class Shadow:
    """What the runner would have written into each block slot."""

    def __init__(self, mgr: KVCacheManager, S: int, W: int):
        self.mgr, self.S, self.W = mgr, S, W
        self.slots: dict[tuple[str, int, int], int] = {}

    def step(self, rid: str, ids: list[int], c: int, m: int) -> None:
        """Write positions [c, c + m), then check every position the step's queries read."""
        S = self.S
        tables = self.mgr.block_tables(rid)
        for g, table in tables.items():
            for p in range(c, c + m):
                self.slots[(g, table[p // S], p % S)] = ids[p]
        for g, table in tables.items():
            held = self.mgr.held_blocks(rid, g)
            lo = 0 if g == FULL else max(0, c - self.W + 1)
            for p in range(lo, c + m):
                assert held[p // S] is not None, f"{g}: block {p // S} of {rid} released but position {p} is read"
                got = self.slots.get((g, table[p // S], p % S))
                assert got == ids[p], f"{g}: {rid} reads {got} at position {p}, wrote {ids[p]}"


# ---- basics ---------------------------------------------------------------------------------------------

def test_allocate_free_round_trip():
    mgr = make(full=16, sliding=16)
    ids = toks(10, 0)
    assert mgr.allocate("a", ids, 0, 10)
    assert {g: len(t) for g, t in mgr.block_tables("a").items()} == {FULL: 3, SLIDING: 3}
    assert mgr.num_used_blocks(FULL) == 3 and mgr.num_free_blocks(FULL) == 13
    assert mgr.usage() == pytest.approx(3 / 16)
    mgr.check_accounting(["a"])
    ids.append(7)
    assert mgr.allocate("a", ids, 10, 1)  # position 10 fits in block 2
    assert mgr.num_used_blocks(FULL) == 3
    mgr.free("a")
    mgr.free("a")  # idempotent
    mgr.free("never-seen")
    assert mgr.num_free_blocks(FULL) == 16 and mgr.num_free_blocks(SLIDING) == 16
    mgr.check_accounting([])
    with pytest.raises(KeyError):
        mgr.block_tables("a")


def test_all_or_nothing_when_one_group_is_short():
    mgr = make(full=16, sliding=2)
    assert not mgr.allocate("a", toks(12, 1), 0, 12)  # sliding needs 3 blocks
    assert mgr.num_free_blocks(FULL) == 16 and mgr.num_free_blocks(SLIDING) == 2
    mgr.check_accounting([])  # "a" is unknown: nothing was kept
    mgr = make(full=2, sliding=16)
    assert not mgr.allocate("a", toks(12, 1), 0, 12)
    assert mgr.num_free_blocks(FULL) == 2 and mgr.num_free_blocks(SLIDING) == 16
    mgr.check_accounting([])


def test_failed_step_does_not_release_sliding_blocks_and_a_later_one_does():
    mgr = make(full=5, sliding=8)
    a = toks(17, 2)
    assert mgr.allocate("a", a, 0, 16)
    assert mgr.allocate("b", toks(4, 3), 0, 4)  # the full group is now exhausted
    before = mgr.held_blocks("a", SLIDING)
    assert not mgr.allocate("a", a, 16, 1)  # needs full block 4; would have released sliding blocks 0, 1
    assert mgr.held_blocks("a", SLIDING) == before and None not in before
    assert mgr.num_free_blocks(SLIDING) == 3
    mgr.check_accounting(["a", "b"])
    mgr.free("b")
    assert mgr.allocate("a", a, 16, 1)  # first query 16, W=8 -> first key 9 -> block 2 is the first needed
    assert mgr.held_blocks("a", SLIDING)[:3] == [None, None, before[2]]
    assert mgr.block_tables("a")[SLIDING][:2] == [0, 0]
    mgr.check_accounting(["a"])


def test_blocks_a_step_releases_count_as_free_for_that_step():
    mgr = make(full=8, sliding=4)
    a = toks(20, 30)
    assert mgr.allocate("a", a, 0, 16)  # the sliding pool is full
    old = mgr.held_blocks("a", SLIDING)
    assert mgr.allocate("a", a, 16, 4)  # first key 9 -> blocks 0, 1 released, one of them reused for block 4
    held = mgr.held_blocks("a", SLIDING)
    assert held[:4] == [None, None] + old[2:] and held[4] in old[:2]
    assert mgr.num_free_blocks(SLIDING) == 1
    mgr.check_accounting(["a"])


def test_two_requests_share_a_cached_prefix():
    mgr = make(full=32, sliding=32)
    p = toks(40, 4)
    assert mgr.allocate("a", p, 0, 40)
    hit = mgr.find_prefix("b", p)
    assert hit.num_tokens == 36  # 9 whole blocks; block 9 would cover the last token
    assert mgr.allocate("b", p, hit.num_tokens, 4, hit)
    ta, tb = mgr.block_tables("a")[FULL], mgr.block_tables("b")[FULL]
    assert tb[:9] == ta[:9] and tb[9] != ta[9]
    assert mgr.num_used_blocks(FULL) == 11  # 10 + one own block for b
    mgr.check_accounting(["a", "b"])
    mgr.free("a")
    assert mgr.num_used_blocks(FULL) == 10  # the shared 9 are still held by b
    mgr.check_accounting(["b"])
    mgr.free("b")
    assert mgr.num_used_blocks(FULL) == 0
    mgr.check_accounting([])


def test_hits_are_whole_blocks_and_never_cover_the_last_token():
    mgr = make(full=32, sliding=32)
    p = toks(40, 5)
    assert mgr.allocate("a", p, 0, 30)  # 7 full blocks (28 tokens) + a partial one
    cases = {32: 28, 31: 28, 30: 28, 29: 28, 28: 24, 5: 4, 4: 0, 3: 0, 1: 0}
    for i, (n, want) in enumerate(cases.items()):
        assert mgr.find_prefix(f"q{i}", p[:n]).num_tokens == want, n
    assert mgr.allocate("a", p, 30, 2)  # block 7 is now full
    assert mgr.find_prefix("q9", p[:33]).num_tokens == 32
    assert mgr.find_prefix("q10", p[:32]).num_tokens == 28


def test_hash_chain_same_block_after_a_different_prefix_does_not_hit():
    mgr = make(full=32, sliding=None)
    X, Y, Z, Y2 = toks(4, 6), toks(4, 7), toks(4, 8), toks(4, 9)
    assert mgr.allocate("a", X + Y, 0, 8)
    assert mgr.find_prefix("b", Z + Y + [1]).num_tokens == 0
    assert mgr.find_prefix("c", X + Y2 + [1]).num_tokens == 4
    assert mgr.find_prefix("d", X + Y + [1]).num_tokens == 8
    assert mgr.allocate("e", Z + Y2, 0, 8)  # Z is now cached at the start of a chain too
    assert mgr.find_prefix("f", Z + Y + [1]).num_tokens == 4  # Y's block was computed after X, not Z


def test_hash_is_blake2b_over_parent_and_little_endian_tokens():
    want = hashlib.blake2b(struct.pack("<3q", 1, 2, 70000), digest_size=16).digest()
    assert hash_block(b"", [1, 2, 70000]) == want
    assert hash_block(want, [1, 2, 70000]) != want and len(hash_block(want, [5])) == 16


# ---- LRU and cached free blocks -------------------------------------------------------------------------

def test_lru_evicts_least_recently_freed_first_and_a_request_tail_first():
    mgr = make(full=8, sliding=None)
    A, B = toks(12, 10), toks(12, 11)
    assert mgr.allocate("a", A, 0, 12) and mgr.allocate("b", B, 0, 12)
    ta = mgr.block_tables("a")[FULL]
    mgr.free("a")
    mgr.free("b")  # free list: 2 never used, then a's blocks tail first, then b's

    def hit(q: list[int]) -> int:
        h = mgr.find_prefix("q", q)
        mgr.free("q")
        return h.num_tokens

    assert mgr.allocate("c", toks(12, 12), 0, 12)  # 2 never-used blocks + a's tail block
    assert mgr.block_tables("c")[FULL][2] == ta[2]
    assert hit(A + [0]) == 8 and hit(B + [0]) == 12
    assert mgr.allocate("c", toks(16, 12), 12, 4)  # one more: a's middle block
    assert mgr.block_tables("c")[FULL][3] == ta[1]
    assert hit(A + [0]) == 4 and hit(B + [0]) == 12
    mgr.check_accounting(["c"])


def test_a_cached_free_block_is_reused_on_a_hit_and_leaves_the_free_list():
    mgr = make(full=8, sliding=8)
    A = toks(8, 13)
    assert mgr.allocate("a", A, 0, 8)
    old = mgr.block_tables("a")
    mgr.free("a")
    assert mgr.num_free_blocks(FULL) == 8
    hit = mgr.find_prefix("b", A + [1])
    assert hit.num_tokens == 8 and hit.blocks == {g: old[g] for g in (FULL, SLIDING)}
    assert mgr.allocate("b", A + [1], 8, 1, hit)
    assert mgr.num_free_blocks(FULL) == 5 and mgr.block_tables("b")[FULL][:2] == old[FULL]
    assert mgr.allocate("c", toks(20, 14), 0, 20)  # takes the other 5 blocks, never b's
    assert not set(mgr.block_tables("c")[FULL]) & set(mgr.block_tables("b")[FULL])
    assert not mgr.allocate("d", toks(4, 15), 0, 4)
    mgr.check_accounting(["b", "c"])


def test_stale_hit_is_refused():
    mgr = make(full=4, sliding=4)
    A = toks(8, 16)
    assert mgr.allocate("a", A, 0, 8)
    mgr.free("a")
    hit = mgr.find_prefix("b", A + [1])
    assert hit.num_tokens == 8
    assert mgr.allocate("c", toks(16, 17), 0, 16)  # evicts everything
    mgr.free("c")
    with pytest.raises(ValueError, match="stale"):
        mgr.allocate("b", A + [1], 8, 1, hit)
    mgr.check_accounting([])


def test_disabled_prefix_caching_never_hits():
    mgr = make(full=8, sliding=8, caching=False)
    A = toks(8, 18)
    assert mgr.allocate("a", A, 0, 8)
    hit = mgr.find_prefix("b", A + [1])
    assert hit.num_tokens == 0 and hit.blocks == {FULL: [], SLIDING: []}
    mgr.free("a")
    assert mgr.find_prefix("b", A + [1]).num_tokens == 0
    assert mgr.prefix_cache_stats() == PrefixCacheStats(0, 0)
    mgr.check_accounting([])  # includes: no hash registered


def test_stats_and_reset_prefix_cache():
    mgr = make(full=8, sliding=8)
    A = toks(8, 19)
    assert mgr.allocate("a", A, 0, 8)
    hit_b = mgr.find_prefix("b", A + [1])
    hit_c = mgr.find_prefix("c", toks(9, 20))
    assert (hit_b.num_tokens, hit_c.num_tokens) == (8, 0)
    assert mgr.prefix_cache_stats() == PrefixCacheStats(queries=0, hits=0)  # lookups alone are not counted
    mgr.record_prefix_query(9, hit_b)  # counted once per admitted request
    mgr.record_prefix_query(9, hit_c)
    assert mgr.prefix_cache_stats() == PrefixCacheStats(queries=18, hits=8)
    assert mgr.reset_prefix_cache() == 0  # a's blocks are in use: they keep their hashes
    mgr.free("a")
    assert mgr.reset_prefix_cache() == 4
    assert mgr.find_prefix("d", A + [1]).num_tokens == 0
    mgr.check_accounting([])


def test_check_accounting_catches_corruption():
    mgr = make(full=8, sliding=8)
    assert mgr.allocate("a", toks(8, 21), 0, 8)
    with pytest.raises(AssertionError, match=r"unknown to it: \['b'\]"):
        mgr.check_accounting(["a", "b"])
    with pytest.raises(AssertionError, match=r"not live: \['a'\]"):
        mgr.check_accounting([])
    pool = mgr._pools[FULL]
    b = mgr.block_tables("a")[FULL][0]
    pool.ref[b] += 1
    with pytest.raises(AssertionError, match="live holders"):
        mgr.check_accounting(["a"])
    pool.ref[b] -= 1
    pool.free[b] = None
    with pytest.raises(AssertionError, match="on the free list"):
        mgr.check_accounting(["a"])


def test_bad_group_specs_are_refused():
    with pytest.raises(ValueError, match="window"):
        KVCacheManager([GroupSpec(SLIDING, 4, None)], 4)
    with pytest.raises(ValueError, match="group name"):
        KVCacheManager([GroupSpec("local", 4, 8)], 4)
    with pytest.raises(ValueError, match="duplicate"):
        KVCacheManager([GroupSpec(FULL, 4, None), GroupSpec(FULL, 4, None)], 4)


# ---- sliding window -------------------------------------------------------------------------------------

@pytest.mark.parametrize("S", [4, 16])
def test_sliding_decode_holds_at_most_window_plus_block(S):
    W, n_max = 8, 200
    need = make(S=S, W=W).blocks_needed(n_max)
    assert need == {FULL: math.ceil(n_max / S), SLIDING: math.ceil((W - 1) / S) + 1}
    mgr = make(full=need[FULL], sliding=need[SLIDING], S=S, W=W)  # exactly the figure: release must keep up
    shadow = Shadow(mgr, S, W)
    ids = toks(1, 22)
    worst = most_used = 0
    rng = random.Random(0)
    for n in range(1, n_max + 1):
        if n > 1:
            ids.append(rng.randrange(1000))
        assert mgr.allocate("a", ids, n - 1, 1)
        shadow.step("a", ids, n - 1, 1)  # the needed blocks are held and hold the right tokens
        used = mgr.num_used_blocks(SLIDING)
        held = mgr.held_blocks("a", SLIDING)
        first_held = next(i for i, b in enumerate(held) if b is not None)
        assert sum(b is not None for b in held) == used == len(held) - first_held  # one contiguous run
        assert first_held <= max(0, n - 1 - W + 1) // S  # nothing the query at n - 1 reads was released
        assert n - first_held * S <= W + S
        worst, most_used = max(worst, n - first_held * S), max(most_used, used)
        assert mgr.num_used_blocks(FULL) == len(mgr.block_tables("a")[FULL]) == math.ceil(n / S)
        mgr.check_accounting(["a"])
    assert worst > W and most_used == need[SLIDING]  # the bound is reached, not just respected


def test_blocks_needed_bound_is_respected_and_reached_with_chunks():
    """Brute force over windows, block sizes and chunk sizes: the held sliding blocks never exceed the
    figure, and some alignment of the chunks reaches it (the first chunk, of 1..m tokens, sets it)."""
    for S in (1, 3, 4, 16):
        for W in (1, 5, 8, 17):
            for m in (1, 2, 7):
                n = 3 * (W + m + S)
                bound = make(S=S, W=W).blocks_needed(n, step_tokens=m)[SLIDING]
                seen = 0
                for first_chunk in range(1, m + 1):
                    mgr = make(full=10 * n, sliding=10 * n, S=S, W=W)
                    ids, c = toks(n, S * W + m), 0
                    while c < n:
                        step = min(first_chunk if c == 0 else m, n - c)
                        assert mgr.allocate("a", ids, c, step)
                        seen = max(seen, mgr.num_used_blocks(SLIDING))
                        c += step
                    assert seen <= bound, (S, W, m, first_chunk, seen, bound)
                assert seen == bound, (S, W, m, seen, bound)


def test_sliding_prefix_hit_needs_only_the_window_blocks():
    S, W = 4, 8
    mgr = make(full=64, sliding=64, S=S, W=W)
    p = toks(100, 23)
    assert mgr.allocate("a", p, 0, 100)
    ta = mgr.held_blocks("a", SLIDING)
    assert mgr.allocate("a", p + [1], 100, 1)  # first query 100 -> first key 93 -> block 23; 0..22 released
    assert mgr.held_blocks("a", SLIDING)[:24] == [None] * 23 + [ta[23]]
    hit = mgr.find_prefix("b", p)
    # 24 whole blocks (96 tokens <= 99); the query at 96 reads keys from 89 -> blocks 22 (free, cached), 23
    assert hit.num_tokens == 96
    assert hit.blocks[SLIDING] == [None] * 22 + ta[22:24]
    assert hit.blocks[FULL] == mgr.block_tables("a")[FULL][:24]
    free_before = mgr.num_free_blocks(SLIDING)
    assert mgr.allocate("b", p, 96, 4, hit)
    assert mgr.num_free_blocks(SLIDING) == free_before - 2  # block 22 left the free list, block 24 is new
    assert mgr.held_blocks("b", SLIDING)[:24] == [None] * 22 + ta[22:24]
    mgr.check_accounting(["a", "b"])


def test_sliding_hit_falls_back_when_the_window_blocks_were_evicted():
    S, W = 4, 8
    mgr = make(full=64, sliding=25, S=S, W=W)
    p = toks(100, 24)
    assert mgr.allocate("a", p, 0, 48)
    assert mgr.allocate("a", p, 48, 52)  # first key 41 -> sliding blocks 0..9 released, then 13 new ones
    ta = mgr.held_blocks("a", SLIDING)
    mgr.free("a")  # sliding free list: a's 0..9 (released earlier), then 24, 23, ..., 10
    assert mgr.allocate("c", toks(60, 25), 0, 60)  # 15 blocks: evicts a's 0..9 and 24..20
    hit = mgr.find_prefix("b", p)
    # the full group has all 24 blocks; sliding 20..24 are gone: a hit of k blocks needs [first(k), k),
    # k=24..21 each need one of 20..23; k=20 needs [(80 - 7) // 4, 20) = [18, 20): cached
    assert hit.num_tokens == 80
    assert hit.blocks[SLIDING] == [None] * 18 + ta[18:20]
    assert mgr.allocate("b", p, 80, 20, hit)
    mgr.check_accounting(["b", "c"])


def test_sliding_only_model():
    mgr = make(full=None, sliding=6, S=4, W=8)
    p = toks(40, 26)
    assert mgr.allocate("a", p, 0, 16) and mgr.allocate("a", p, 16, 4)
    assert mgr.num_used_blocks(SLIDING) == 3  # first key 9 -> blocks 2..4
    hit = mgr.find_prefix("b", p[:20] + [1])
    assert hit.num_tokens == 20 and hit.blocks == {SLIDING: [None, None, None] + mgr.held_blocks("a", SLIDING)[3:5]}
    assert mgr.usage() == pytest.approx(3 / 6)


# ---- randomized -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("full,sliding,caching,seed", [
    (24, 10, True, 0), (24, 10, True, 1), (24, 10, False, 2), (20, None, True, 3), (None, 9, True, 4),
])
def test_random_operations_keep_accounting(full, sliding, caching, seed):
    S, W = 4, 8
    rng = random.Random(seed)
    mgr = make(full=full, sliding=sliding, S=S, W=W, caching=caching)
    shadow = Shadow(mgr, S, W)
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(0, 30))] for _ in range(4)]
    live: dict[str, dict] = {}
    hits = failures = steps = 0
    for op in range(2500):
        r = rng.random()
        if r < 0.2 and len(live) < 6:
            rid = f"r{op}"
            ids = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 12))]
            hit = mgr.find_prefix(rid, ids)
            h = hit.num_tokens
            assert h % S == 0 and h <= len(ids) - 1
            hits += h > 0
            m = rng.randint(1, len(ids) - h)
            if mgr.allocate(rid, ids, h, m, hit):
                shadow.step(rid, ids, h, m)
                live[rid] = {"ids": ids, "c": h + m}
            else:
                failures += 1
                mgr.free(rid)  # the scheduler drops it (or keeps it waiting): nothing is held either way
        elif r < 0.85 and live:
            rid = rng.choice(sorted(live))
            st = live[rid]
            if st["c"] == len(st["ids"]):
                if len(st["ids"]) >= 70:
                    mgr.free(rid)
                    del live[rid]
                    mgr.check_accounting(live)
                    continue
                st["ids"].append(rng.randrange(50))  # decode: the sampled token joins the sequence
            m = rng.randint(1, len(st["ids"]) - st["c"])
            before = ({rid2: mgr.block_tables(rid2) for rid2 in live},
                      {g: mgr.num_free_blocks(g) for g in mgr.group_names()})
            if mgr.allocate(rid, st["ids"], st["c"], m):
                shadow.step(rid, st["ids"], st["c"], m)
                st["c"] += m
                steps += 1
            else:
                failures += 1
                after = ({rid2: mgr.block_tables(rid2) for rid2 in live},
                         {g: mgr.num_free_blocks(g) for g in mgr.group_names()})
                assert after == before, "a failed allocate changed something"
        elif live:
            rid = rng.choice(sorted(live))
            mgr.free(rid)
            del live[rid]
        mgr.check_accounting(live)
    for rid in list(live):
        mgr.free(rid)
    mgr.check_accounting([])
    for g in mgr.group_names():
        assert mgr.num_free_blocks(g) == mgr.num_blocks(g)
    assert failures > 20 and steps > 200
    assert (hits > 20) if caching else (hits == 0)
