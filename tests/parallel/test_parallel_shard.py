"""Shard arithmetic, the loader's shard regions, the step plan's tensor encoding, micro-batch splitting and
DP load balancing: pure, single-process checks (no process group)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from oss_engine.config import (ConfigError, LaunchEnv, ModelConfig, ParallelConfig, check_rank_devices, launch_env,
                               resolve_collective_backend, resolve_executor_backend)
from oss_engine.engine.dp_engine import DPEngine
from oss_engine.engine.runner import ScheduledSeq
from oss_engine.kernels import get_ops
from oss_engine.model.forward_batch import AttentionMetadata, ForwardBatch
from oss_engine.model.gpt_oss import GptOssModel
from oss_engine.parallel.comm import GroupComm, ModelComms, MoEComm
from oss_engine.parallel.executor import split_micro_batches
from oss_engine.parallel.shard import RankShard, intermediate_range, layer_range
from oss_engine.parallel.step_io import pack, unpack
from oss_engine.presets import preset_config
from oss_engine.tiny import make_config, TinySpec
from oss_engine.weights.names import expected_tensors


def tiny_cfg(**kw) -> ModelConfig:
    spec = dict(num_hidden_layers=3, num_local_experts=8, num_experts_per_tok=2, hidden_size=64,
                intermediate_size=96, num_attention_heads=8, num_key_value_heads=4, head_dim=16, sliding_window=8,
                vocab_size=1003, original_max_position_embeddings=64, rope_factor=32.0)
    spec.update(kw)
    return ModelConfig.from_dict(make_config(TinySpec(**spec), fmt="mxfp4"))


def test_intermediate_split_in_whole_blocks():
    assert [intermediate_range(96, 4, r) for r in range(4)] == [(0, 32), (32, 64), (64, 96), (96, 96)]
    sizes = [b - a for a, b in (intermediate_range(2880, 4, r) for r in range(4))]
    assert sizes == [736, 736, 736, 672]  # GPT_OSS_SPEC section 5
    assert [intermediate_range(96, 2, r) for r in range(2)] == [(0, 64), (64, 96)]


def test_layers_split_like_vllm():
    assert [layer_range(3, 2, s) for s in range(2)] == [(0, 2), (2, 3)]
    assert [layer_range(36, 4, s) for s in range(4)] == [(0, 9), (9, 18), (18, 27), (27, 36)]
    assert [layer_range(5, 3, s) for s in range(3)] == [(0, 2), (2, 4), (4, 5)]


def test_rank_shards_tp_and_ep():
    cfg = tiny_cfg()
    tp4 = [RankShard.of(cfg, ParallelConfig(tensor_parallel_size=4), tp_rank=r, pp_rank=0, moe_rank=r)
           for r in range(4)]
    assert [s.heads for s in tp4] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert [s.kv_heads for s in tp4] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert [s.intermediate_size for s in tp4] == [32, 32, 32, 0]
    assert [s.owns_expert_bias for s in tp4] == [True, False, False, False]
    assert [s.vocab for s in tp4] == [(0, 251), (251, 502), (502, 753), (753, 1003)]
    ep = ParallelConfig(tensor_parallel_size=2, data_parallel_size=2, enable_expert_parallel=True)
    shards = [RankShard.of(cfg, ep, tp_rank=r % 2, pp_rank=0, moe_rank=r) for r in range(4)]
    assert [s.experts for s in shards] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert all(s.intermediate == (0, 96) and s.owns_expert_bias for s in shards)


def test_parallel_config_refuses_what_cannot_split():
    cfg = tiny_cfg()
    with pytest.raises(ConfigError, match="must divide num_key_value_heads"):
        ParallelConfig(tensor_parallel_size=8).validate(cfg)
    with pytest.raises(ConfigError, match="exceeds num_hidden_layers"):
        ParallelConfig(pipeline_parallel_size=4).validate(cfg)
    with pytest.raises(ConfigError, match="must divide num_local_experts"):
        ParallelConfig(tensor_parallel_size=1, data_parallel_size=3, enable_expert_parallel=True).validate(cfg)


def test_executor_backend_resolution():
    env = LaunchEnv(rank=0, local_rank=0, world_size=4, master_addr="10.0.0.1", master_port=29500)
    assert resolve_executor_backend("auto", 1, None) == "uni"
    assert resolve_executor_backend("auto", 2, None) == "mp"
    assert resolve_executor_backend("mp", 1, None) == "mp"  # forced: a process group of one
    assert resolve_executor_backend("auto", 4, env) == "external_launcher"
    with pytest.raises(ConfigError, match="torchrun started 4 processes but tp x pp x dp = 2"):
        resolve_executor_backend("auto", 2, env)
    with pytest.raises(ConfigError, match="needs torchrun's RANK"):
        resolve_executor_backend("external_launcher", 2, None)
    with pytest.raises(ConfigError, match="must be 'auto' or one of"):
        resolve_executor_backend("ray", 2, None)
    with pytest.raises(ConfigError, match="'uni' runs one process"):
        resolve_executor_backend("uni", 2, None)
    assert ParallelConfig(distributed_executor_backend="external_launcher").init_method == "env://"
    assert ParallelConfig(master_port=1234).init_method == "tcp://127.0.0.1:1234"


def test_collective_backend_resolution():
    assert resolve_collective_backend("auto", "cpu") == "gloo"
    assert resolve_collective_backend("auto", "cuda") == "nccl"
    assert resolve_collective_backend("auto", "cuda:1") == "nccl"
    assert resolve_collective_backend("gloo", "cuda") == "gloo"  # ranks may share a GPU
    assert resolve_collective_backend("nccl", "cuda") == "nccl"
    with pytest.raises(ConfigError, match="'nccl' needs a CUDA device, got 'cpu'"):
        resolve_collective_backend("nccl", "cpu")
    with pytest.raises(ConfigError, match="must be 'auto', 'nccl' or 'gloo', got 'mpi'"):
        resolve_collective_backend("mpi", "cuda")


@pytest.mark.parametrize("layout, backend, launcher, gpus, refusal", [
    (dict(tensor_parallel_size=2), "nccl", "mp", 1, "2 ranks need 2 GPUs with NCCL, this host has 1"),
    (dict(tensor_parallel_size=2, data_parallel_size=2), "nccl", "mp", 2, "4 ranks need 4 GPUs"),
    (dict(tensor_parallel_size=2), "nccl", "mp", 2, None),
    (dict(tensor_parallel_size=4), "nccl", "external_launcher", 1, None),  # torchrun's world may span hosts
    (dict(tensor_parallel_size=8, enable_expert_parallel=True), "gloo", "mp", 1, None),
    (dict(tensor_parallel_size=2, pipeline_parallel_size=2), "gloo", "mp", 1, "tensor and expert parallel only"),
    (dict(data_parallel_size=2), "gloo", "mp", 4, "tensor and expert parallel only"),
    (dict(), "nccl", "mp", 0, None),  # the forced path at world size 1
])
def test_rank_devices_checked_before_any_process_starts(layout, backend, launcher, gpus, refusal):
    par = ParallelConfig(**layout, backend=backend, distributed_executor_backend=launcher)
    if refusal is None:
        check_rank_devices(par, "cuda", gpus)
        check_rank_devices(replace(par, backend="gloo"), "cpu", 0)
    else:
        with pytest.raises(ConfigError, match=refusal):
            check_rank_devices(par, "cuda", gpus)
        check_rank_devices(replace(par, backend="gloo"), "cpu", 0)  # CPU ranks share the CPU


def test_launch_env_reads_torchrun_variables(monkeypatch):
    for name, value in dict(RANK="3", LOCAL_RANK="1", WORLD_SIZE="4", MASTER_ADDR="h0", MASTER_PORT="29500").items():
        monkeypatch.setenv(name, value)
    assert launch_env() == LaunchEnv(3, 1, 4, "h0", 29500)
    monkeypatch.delenv("LOCAL_RANK")
    assert launch_env() is None


def test_shard_regions_of_the_name_table():
    cfg = tiny_cfg()  # H 8, K 4, hd 16, I 96
    s = RankShard.of(cfg, ParallelConfig(tensor_parallel_size=2), tp_rank=1, pp_rank=1 - 1, moe_rank=1)
    place = expected_tensors(cfg, s)
    L = "model.layers.1."
    assert place[L + "self_attn.q_proj.weight"].region.dims == {0: (64, 128, 128)}
    assert place[L + "self_attn.q_proj.weight"].rows == (0, 64)
    assert place[L + "self_attn.v_proj.bias"].region.dims == {0: (32, 64, 64)}
    assert place[L + "self_attn.v_proj.bias"].rows == (96, 128)
    assert place[L + "self_attn.o_proj.weight"].region.dims == {1: (64, 128, 128)}
    assert place[L + "self_attn.o_proj.bias"].region.zero  # tp rank 0 adds it
    assert place[L + "self_attn.sinks"].region.dims == {0: (4, 8, 8)}
    assert place[L + "mlp.experts.gate_up_proj_blocks"].region.dims == {0: (0, 8, 8), 1: (128, 192, 192)}
    assert place[L + "mlp.experts.down_proj_scales"].region.dims == {0: (0, 8, 8), 2: (2, 3, 3)}
    assert place[L + "mlp.experts.down_proj_bias"].region.zero
    assert place["lm_head.weight"].region.dims == {0: (502, 1003, 1003)}
    stage1 = RankShard.of(cfg, ParallelConfig(pipeline_parallel_size=2), tp_rank=0, pp_rank=1, moe_rank=0)
    held = {k for k, p in expected_tensors(cfg, stage1).items() if p.region is not None}
    assert "model.embed_tokens.weight" not in held and "lm_head.weight" in held
    assert not any(k.startswith(("model.layers.0.", "model.layers.1.")) for k in held)
    assert any(k.startswith("model.layers.2.") for k in held)


def _param_bytes(cfg: ModelConfig, par: ParallelConfig, rank: int) -> int:
    tp, pp = par.tensor_parallel_size, par.pipeline_parallel_size
    tp_rank, pp_rank, dp_rank = rank % tp, rank // tp % pp, rank // (tp * pp)
    shard = RankShard.of(cfg, par, tp_rank=tp_rank, pp_rank=pp_rank, moe_rank=dp_rank * tp + tp_rank)
    comms = ModelComms(tp=GroupComm(None, tuple(range(tp)), tp_rank),
                       moe=MoEComm(GroupComm(None, tuple(range(par.moe_size)), dp_rank * tp + tp_rank)))
    with torch.device("meta"):
        model = GptOssModel(cfg, torch.bfloat16, get_ops("ref"), shard, comms)
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("par", [ParallelConfig(tensor_parallel_size=4), ParallelConfig(tensor_parallel_size=8),
                                 ParallelConfig(tensor_parallel_size=4, enable_expert_parallel=True),
                                 ParallelConfig(pipeline_parallel_size=4)],
                         ids=["tp4", "tp8", "tp4-ep", "pp4"])
def test_per_rank_parameter_bytes_at_gpt_oss_120b_shapes(par):
    """Parameters each rank allocates (meta device, nothing loaded) at the published 120b shapes: within 4%
    of the largest share (the rest: replicated norms and routers, and for pp the embedding vs lm_head). The
    largest share is 1 / ranks, except that whole 32-wide blocks give the first tp ranks ceil(90 / tp) of the
    90 intermediate blocks (tp 8: 12 / 90 = 0.133 instead of 0.125)."""
    cfg = ModelConfig.from_dict(preset_config("gpt-oss-120b"))
    total = _param_bytes(cfg, ParallelConfig(), 0)
    per = [_param_bytes(cfg, par, r) for r in range(par.world_size)]
    n, blocks = par.moe_size, cfg.intermediate_size // 32
    share = 1 / par.world_size if par.enable_expert_parallel or n == 1 else -(-blocks // n) / blocks
    assert sum(per) >= total
    assert max(per) <= 1.04 * share * total, [round(p / total, 4) for p in per]
    print(par, [f"{p / 2**30:.2f} GiB" for p in per], f"of {total / 2**30:.2f} GiB")


def _batch(ids: list[int], widths: int, start: int = 0) -> ForwardBatch:
    T = len(ids)
    meta = AttentionMetadata(torch.tensor([0, T], dtype=torch.int32), torch.tensor([start + T], dtype=torch.int32),
                             torch.arange(widths, dtype=torch.int32).view(1, widths),
                             torch.arange(start, start + T, dtype=torch.int64), max_query_len=T)
    return ForwardBatch(torch.tensor(ids), torch.arange(start, start + T), {"full_attention": meta},
                        torch.tensor([T - 1]))


def test_step_plan_round_trips_through_int64_tensors():
    empty_meta = AttentionMetadata(torch.zeros(1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                                   torch.zeros(0, 0, dtype=torch.int32), torch.zeros(0, dtype=torch.int64), 0)
    empty = ForwardBatch(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                         {"full_attention": empty_meta}, torch.zeros(0, dtype=torch.int64))
    plan = [[_batch([5, 6, 7], 2), empty], [_batch([9], 3, start=40), _batch([1, 2], 1)]]
    header, payload = pack(plan, ["full_attention"])
    assert header.dtype == payload.dtype == torch.int64 and header.numel() == 2 * 2 * 5
    back = unpack(header, payload, 2, 2, ["full_attention"], "cpu")
    for r in range(2):
        for m in range(2):
            a, b = plan[r][m], back[r][m]
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.positions, b.positions)
            assert torch.equal(a.logits_indices, b.logits_indices)
            ma, mb = a.attention["full_attention"], b.attention["full_attention"]
            for f in ("query_start_loc", "seq_lens", "block_tables", "slot_mapping"):
                x, y = getattr(ma, f), getattr(mb, f)
                assert x.dtype == y.dtype and torch.equal(x, y), f
            assert ma.max_query_len == mb.max_query_len
    assert back[0][0].dp_tokens == (3, 1) and back[1][1].dp_tokens == (0, 2)


def test_micro_batches_are_contiguous_and_balanced():
    seqs = [ScheduledSeq([0] * n, 0, n, {}) for n in (5, 1, 1, 1)]
    split = split_micro_batches(seqs, 2)
    assert [[s.num_new for s in m] for m in split] == [[5], [1, 1, 1]]
    assert [len(m) for m in split_micro_batches(seqs[:1], 3)] == [1, 0, 0]
    assert split_micro_batches([], 2) == [[], []]


class _FakeEngine:
    def __init__(self):
        self.requests: list[str] = []
        self.cfg = None

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.requests)

    def add_request(self, rid, *args, **kw):
        self.requests.append(rid)

    def abort(self, rid):
        self.requests.remove(rid)


def test_dp_engine_balances_by_unfinished_requests():
    a, b = _FakeEngine(), _FakeEngine()
    dp = DPEngine([a, b], execute=None)
    for i in range(3):
        dp.add_request(str(i), [1], None)
    assert a.requests == ["0", "2"] and b.requests == ["1"]
    dp.abort("0")
    dp.abort("2")
    dp.add_request("3", [1], None)
    dp.add_request("4", [1], None)
    assert a.requests == ["3", "4"] and b.requests == ["1"]  # a tie goes to the first replica
    with pytest.raises(ValueError, match="already in use"):
        dp.add_request("4", [1], None)
