"""The Triton MoE routing against its reference twin `route_ref`.

Without a GPU the kernel runs in Triton's interpreter (float32 logits; bf16 logits too, whose upcast is exact
there); on a CUDA machine the same cases run compiled, plus bf16 at gpt-oss sizes. Outputs start poisoned
(weights NaN, ids -1), so a token or slot never written fails. Where logits tie, torch.topk's order is
unspecified; those cases are checked against a stable sort (the kernel's documented order: lower expert
index first) and, for the weights and the selected values, against route_ref itself.
Legend: T tokens, E experts, A experts per token.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from oss_engine.kernels.ref.moe import route_ref
from oss_engine.kernels.triton import route as route_mod
from oss_engine.kernels.triton.route import route_triton
from triton_cases import DEV, INTERPRET, run_compile_check


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """The outputs start as NaN (weights) and -1 (ids), so a token or slot never written shows."""
    def fill(shape, dtype, device):
        return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
    monkeypatch.setattr(route_mod, "_empty", fill)


def stable_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """ids [T, A] in the kernel's documented order: value descending, ties by lower expert index."""
    return torch.sort(logits.float(), dim=-1, descending=True, stable=True).indices[:, :k]


def check(logits: torch.Tensor, k: int, ties_possible: bool) -> None:
    T = logits.shape[0]
    logits0 = logits.clone()
    want_w, want_ids = route_ref(logits, k)
    got_w, got_ids = route_triton(logits, k)
    assert torch.equal(logits, logits0)
    assert got_w.shape == got_ids.shape == (T, k) and got_w.dtype == torch.float32 and got_ids.dtype == torch.int64
    assert not got_w.isnan().any() and (got_ids >= 0).all(), "left unwritten"
    if ties_possible:
        assert torch.equal(got_ids, stable_topk(logits, k))
        # the selected values as given (exact), in the reference's order
        assert torch.equal(logits.gather(1, got_ids), logits.gather(1, want_ids))
    else:
        assert torch.equal(got_ids, want_ids)
    # rtol: the GPU's exp is ex2.approx after a multiply by log2(e), ~|logit gap| * 1e-7 relative
    assert torch.allclose(got_w, want_w, rtol=1e-5, atol=1e-7)
    assert torch.allclose(got_w.sum(-1), torch.ones(T, device=got_w.device), atol=1e-6)


def distinct_rows(logits: torch.Tensor) -> bool:
    return all(torch.unique(row).numel() == row.numel() for row in logits)


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("E,A", [(8, 2), (32, 4), (128, 4), (20, 3)])  # tiny, 20b, 120b; E and A not powers of 2
def test_route(T, E, A):
    logits = 3 * torch.randn(T, E, device=DEV)
    assert distinct_rows(logits), "a tie: this case must compare with the stable sort"
    check(logits, A, ties_possible=False)


def test_many_tokens_several_programs():
    # T = 300 spans several programs of BT tokens, with a partial last one
    logits = torch.randn(300, 32, device=DEV)
    assert distinct_rows(logits)
    check(logits, 4, ties_possible=False)


@pytest.mark.parametrize("E,A", [(8, 2), (32, 4), (128, 4)])
def test_ties_lowest_index_first(E, A):
    # integer logits in a small range: most rows tie, several across the top-k boundary
    logits = torch.randint(-2, 3, (33, E), device=DEV).float()
    check(logits, A, ties_possible=True)
    w, ids = route_triton(torch.zeros(2, E, device=DEV), A)  # all equal: experts 0..A-1, uniform weights
    assert torch.equal(ids, torch.arange(A, device=DEV).repeat(2, 1))
    assert torch.allclose(w, torch.full_like(w, 1 / A))


def test_worked_example_and_infinities():
    logits = torch.tensor([[1.0, 3.0, 3.0, -2.0],  # the docstring's example
                           [float("-inf"), 0.5, float("-inf"), float("-inf")],  # -inf selectable after finite
                           [-1e30, 2.0, 1e30, 0.0]], device=DEV)  # extreme finite values: weight 1 and 0
    w, ids = route_triton(logits, 2)
    assert ids.tolist() == [[1, 2], [1, 0], [2, 1]]
    assert w.tolist() == [[0.5, 0.5], [1.0, 0.0], [1.0, 0.0]]


def test_padding_columns_never_selected():
    # E = 20 pads to 32 columns; with every logit negative a pad column read as 0 would win
    logits = -1 - torch.rand(7, 20, device=DEV)
    check(logits, 3, ties_possible=not distinct_rows(logits))


def test_strided_logits():
    # a column slice of a wider tensor (row stride 48), and a transposed one (column stride 9)
    wide = torch.randn(9, 48, device=DEV)
    check(wide[:, 8:40], 4, ties_possible=not distinct_rows(wide[:, 8:40]))
    logits = torch.randn(32, 9, device=DEV).t()  # [9, 32], strides (1, 9)
    check(logits, 4, ties_possible=not distinct_rows(logits))


@pytest.mark.parametrize("E,A", [(32, 4), (128, 4)])
def test_bf16_logits(E, A):
    # bf16 logits (as on the GPU): compared exactly as given after an exact upcast; 8-bit mantissas tie often
    logits = torch.randn(33, E, device=DEV).to(torch.bfloat16)
    check(logits, A, ties_possible=True)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="GPU sizes")
@pytest.mark.parametrize("E", [32, 128])
@pytest.mark.parametrize("T", [1, 64, 2048])
def test_bf16_gpu(T, E):
    logits = (2 * torch.randn(T, E, device="cuda")).to(torch.bfloat16)
    check(logits, 4, ties_possible=True)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="needs CUDA graphs")
def test_cuda_graph_capture_gpu():
    logits = torch.randn(64, 32, device="cuda").to(torch.bfloat16)
    route_triton(logits, 4)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        w, ids = route_triton(logits, 4)
    logits.copy_(torch.randn_like(logits))  # new inputs in the same buffer: the replay must see them
    g.replay()
    assert torch.equal(ids, stable_topk(logits, 4))
    assert torch.allclose(w, route_ref(logits, 4)[0], rtol=1e-5, atol=1e-7)


# Compiles the kernel for sm_90 (PTX and cubin through the bundled ptxas; nothing launched) for bf16 logits at
# the decode and prefill tiles, specialised as a real launch would be. In a subprocess: TRITON_INTERPRET is fixed
# when the kernel is defined.
_COMPILE_FOR_HOPPER = r"""
from oss_engine.kernels.triton import route as R

ptrs = dict(logits_ptr="*bf16", w_ptr="*fp32", ids_ptr="*i64")
for E, BT in ((32, 1), (128, 16)):
    compile_sm90(R._route_kernel, dict(E=E, A=4, E_PAD=E, A_PAD=4, BLOCK_T=BT, PDL=True, s_le=1, s_wa=1, s_ia=1), ptrs)
print("ok")
"""


@pytest.mark.skipif(not INTERPRET, reason="on a GPU the tests above run the compiled kernel")
def test_compiles_for_hopper():
    run_compile_check(_COMPILE_FOR_HOPPER)
