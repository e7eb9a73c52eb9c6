"""What one rank holds of the model: pure arithmetic on sizes, no torch.distributed.

`RankShard` is derived once from (ModelConfig, ParallelConfig, rank coordinates) and read by the model's
constructors (parameter shapes) and by the weight loader's shard rules (which rows to read). Ranges are
half-open [start, stop).

Worked examples (GPT_OSS_SPEC section 5):
  - MoE intermediate split in whole 32-wide MXFP4 blocks, ceil(blocks / n) per rank, the last ones fewer
    or none: I = 2880 (90 blocks), n = 4 -> 23, 23, 23, 21 blocks = 736, 736, 736, 672 columns;
    I = 96 (3 blocks), n = 4 -> 1, 1, 1, 0 blocks = 32, 32, 32, 0.
  - Layers over pipeline stages as vLLM splits them: L // pp each, the remainder going one each to the
    stages before the last (the last also runs the final norm and lm_head): L = 3, pp = 2 -> [0, 2), [2, 3).
  - Vocabulary: ceil(V / tp) rows per rank, the last fewer: V = 1000, tp = 3 -> [0, 334), [334, 668), [668, 1000).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import MXFP4_BLOCK, ModelConfig, ParallelConfig


def even_split(total: int, parts: int, index: int) -> tuple[int, int]:
    """ceil(total / parts) per part, the last parts fewer or none (e.g. 3 over 4 -> 1, 1, 1, 0)."""
    per = -(-total // parts)
    return min(index * per, total), min((index + 1) * per, total)


def intermediate_range(intermediate: int, parts: int, index: int) -> tuple[int, int]:
    """Columns [start, stop) of the expert intermediate dimension, in whole MXFP4 blocks."""
    blocks = -(-intermediate // MXFP4_BLOCK)
    b0, b1 = even_split(blocks, parts, index)
    return min(b0 * MXFP4_BLOCK, intermediate), min(b1 * MXFP4_BLOCK, intermediate)


def layer_range(num_layers: int, pp: int, stage: int) -> tuple[int, int]:
    sizes = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):  # vLLM: the remainder goes to the stages before the last
        sizes[-i] += 1
    start = sum(sizes[:stage])
    return start, start + sizes[stage]


@dataclass(frozen=True)
class RankShard:
    """The slices of the model one rank holds. Legend: H q-heads, K kv-heads, V vocab, E experts,
    I intermediate. The defaults (`RankShard.full(cfg)`) describe the whole model on one process."""

    heads: tuple[int, int]  # q heads [h0, h1)
    kv_heads: tuple[int, int]  # kv heads [k0, k1)
    vocab: tuple[int, int]  # embedding / lm_head rows
    layers: tuple[int, int]  # this pipeline stage's layers
    experts: tuple[int, int]  # experts held (all of them without expert parallel)
    intermediate: tuple[int, int]  # intermediate columns of every held expert (all of them with EP)
    owns_expert_bias: bool  # adds the down-projection bias (one rank of the MoE group without EP)
    owns_row_bias: bool  # adds o_proj's bias (tp rank 0)
    first_stage: bool
    last_stage: bool

    @classmethod
    def full(cls, cfg: ModelConfig) -> RankShard:
        return cls.of(cfg, ParallelConfig(), tp_rank=0, pp_rank=0, moe_rank=0)

    @classmethod
    def of(cls, cfg: ModelConfig, par: ParallelConfig, *, tp_rank: int, pp_rank: int, moe_rank: int) -> RankShard:
        tp, pp, moe = par.tensor_parallel_size, par.pipeline_parallel_size, par.moe_size
        H, K, E, I = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_local_experts, cfg.intermediate_size
        if par.enable_expert_parallel:  # whole experts, contiguous: rank r owns [r E/n, (r+1) E/n)
            experts, inter, owns_bias = (moe_rank * E // moe, (moe_rank + 1) * E // moe), (0, I), True
        else:
            experts, inter, owns_bias = (0, E), intermediate_range(I, moe, moe_rank), moe_rank == 0
        return cls(
            heads=(tp_rank * H // tp, (tp_rank + 1) * H // tp),
            kv_heads=(tp_rank * K // tp, (tp_rank + 1) * K // tp),
            vocab=even_split(cfg.vocab_size, tp, tp_rank),
            layers=layer_range(cfg.num_hidden_layers, pp, pp_rank),
            experts=experts,
            intermediate=inter,
            owns_expert_bias=owns_bias,
            owns_row_bias=tp_rank == 0,
            first_stage=pp_rank == 0,
            last_stage=pp_rank == pp - 1,
        )

    @property
    def num_heads(self) -> int:
        return self.heads[1] - self.heads[0]

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    @property
    def num_experts(self) -> int:
        return self.experts[1] - self.experts[0]

    @property
    def intermediate_size(self) -> int:
        return self.intermediate[1] - self.intermediate[0]

    @property
    def vocab_size(self) -> int:
        return self.vocab[1] - self.vocab[0]

    def holds_layer(self, layer: int) -> bool:
        return self.layers[0] <= layer < self.layers[1]
