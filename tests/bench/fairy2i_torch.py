"""fairy2i_torch.py — Fairy2i QAT in plain PyTorch, written from shared FAIRY2I.md: the strongest PyTorch
Fairy2i we know how to write, the baseline that fairy2's own step is measured against
(tests/bench/torch_baselines.py, names ours_*).

Master weights are the real matrices R (fp32). Every forward splits R into the widely-linear U, W, quantizes
each with T residual phase-aware stages (per-tensor scales per plane), rebuilds a real R_hat and multiplies by
it; the gradient reaches R through an identity straight-through estimator.

What makes it fast in PyTorch: the decoder's linear layers are stacked by shape into a few [L, out, in]
master tensors (SmolLM2: q/o, k/v, gate/up, down), so one quantize call covers a whole group with per-layer
scales (reductions over the last two dims), no host syncs (scales are where/clamp, never a data-dependent
branch), codes by exact comparisons (no atan2), and R_hat made once per step in the autocast dtype. Each
converted layer reads its R_hat as a view of its group's result; unbind's backward stacks the group's
gradients in one op. torch.compile can take the quantizer alone (quantize_rebuild) or the model too.

Run `python3 tests/bench/fairy2i_torch.py [--device cuda]` for the unit check: the quantizer against a
direct per-element float64 reference (codes by atan2 with the tie and zero rules, scales as axis means),
split/rebuild round trip, shrinking residuals, identity STE, and (on a GPU) device against CPU.
"""

import argparse
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

SCALE_MIN = 1e-6  # FAIRY2I.md: scales clamped to >= 1e-6, an empty set gives 1e-6


def split(R):
    """R [..., 2n, 2m] -> (re, im), each [2, ..., n, m]: index 0 is U, 1 is W (FAIRY2I.md section 1)."""
    n, m = R.shape[-2] // 2, R.shape[-1] // 2
    r11, r12 = R[..., :n, :m], R[..., :n, m:]
    r21, r22 = R[..., n:, :m], R[..., n:, m:]
    re = torch.stack((r11 + r22, r11 - r22)) * 0.5
    im = torch.stack((r21 - r12, r12 + r21)) * 0.5
    return re, im


def rebuild(re, im):
    """Inverse of split: (re, im) [2, ..., n, m] -> R [..., 2n, 2m]."""
    u_re, w_re = re[0], re[1]
    u_im, w_im = im[0], im[1]
    top = torch.cat((u_re + w_re, w_im - u_im), dim=-1)
    bottom = torch.cat((u_im + w_im, u_re - w_re), dim=-1)
    return torch.cat((top, bottom), dim=-2)


def phase_stage(a, b):
    """One phase-aware stage on complex residuals a + ib, with one scale pair per matrix (the last two
    dims). Returns the dequantized values (d_re, d_im).

    Codes by exact comparisons (as runtime/f2_fairy2.h): with p = b - a, q = b + a, k = 1 iff p >= 0 and
    q > 0, k = 3 iff p <= 0 and q < 0 (the +-i codes); the rest is +-1: -1 iff a < 0 (k = 2 has a < 0, k = 0
    a > 0, the origin, any signs of zero, is +1). Diagonals go counter-clockwise, as floor(2 theta/pi + 1/2)."""
    neg_a = -a
    p_neg, p_pos = b < a, b > a
    q_neg, q_pos = b < neg_a, b > neg_a
    is_im = (~p_neg & q_pos) | (~p_pos & q_neg)
    is_re = ~is_im
    dims = (-2, -1)
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    count_re = is_re.sum(dims, keepdim=True).to(a.dtype)
    count_im = (a.shape[-2] * a.shape[-1]) - count_re  # fp32 counts are exact up to 2^24 entries
    sum_re = torch.where(is_re, a.abs(), zero).sum(dims, keepdim=True)
    sum_im = torch.where(is_im, b.abs(), zero).sum(dims, keepdim=True)
    s_re = torch.where(count_re > 0, sum_re / count_re.clamp_min(1), SCALE_MIN).clamp_min(SCALE_MIN)
    s_im = torch.where(count_im > 0, sum_im / count_im.clamp_min(1), SCALE_MIN).clamp_min(SCALE_MIN)
    d_re = torch.where(is_re, torch.where(a < 0, -s_re, s_re), zero)
    d_im = torch.where(is_im, torch.where(b < 0, -s_im, s_im), zero)
    return d_re, d_im


def quantize_rebuild(R, stages, out_dtype=None):
    """R [..., 2n, 2m] -> R_hat: split, T residual stages on U and W separately, rebuild, cast to out_dtype.
    Every leading index of R is its own tensor (own scales). No gradient is defined here (see QuantSTE)."""
    re, im = split(R)
    hat_re = torch.zeros_like(re)
    hat_im = torch.zeros_like(im)
    for _ in range(stages):
        d_re, d_im = phase_stage(re, im)
        re, im = re - d_re, im - d_im
        hat_re, hat_im = hat_re + d_re, hat_im + d_im
    out = rebuild(hat_re, hat_im)
    return out if out_dtype is None else out.to(out_dtype)


class QuantSTE(torch.autograd.Function):
    """R_hat = quantize(R) forward; identity backward (dL/dR = dL/dR_hat, cast back to R's dtype)."""

    @staticmethod
    def forward(ctx, R, stages, out_dtype, qfn):
        ctx.master_dtype = R.dtype
        return qfn(R.detach(), stages, out_dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.master_dtype), None, None, None


class Fairy2iBank(nn.Module):
    """The master R of all converted layers, stacked by shape: groups[g] is [L_g, out, in] fp32.
    refresh() quantizes every group once (call it before each forward); current[g][i] is then layer i's
    R_hat, a view that carries the STE back to groups[g]."""

    def __init__(self, weights_by_group, stages):
        super().__init__()
        self.groups = nn.ParameterList([nn.Parameter(w) for w in weights_by_group])
        self.stages = stages
        self.out_dtype = None  # None: R's dtype; the trainer sets the autocast dtype
        self.qfn = quantize_rebuild
        self.current = None

    def compile_quantizer(self, **kw):
        self.qfn = torch.compile(quantize_rebuild, dynamic=False, **kw)

    def refresh(self):
        self.current = [QuantSTE.apply(R, self.stages, self.out_dtype, self.qfn).unbind(0)
                        for R in self.groups]

    def release(self):
        self.current = None


class Fairy2iLinear(nn.Module):
    """A converted linear layer: y = x R_hat^T with R_hat from its bank's group g, index i."""

    def __init__(self, bank, group, index, in_features, out_features):
        super().__init__()
        self._bank = [bank]  # a list, so the bank is not registered twice as a submodule
        self.group, self.index = group, index
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x):
        return F.linear(x, self._bank[0].current[self.group][self.index])

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"group={self.group}, index={self.index}"


def convert_decoder_linears(model, stages, layers_attr="model.layers"):
    """Replaces every nn.Linear inside the decoder blocks (q, k, v, o, gate, up, down for Llama) by a
    Fairy2iLinear; the embedding and the (tied) LM head stay full precision. Layers with an odd dimension
    or a bias stay as they are (FAIRY2I.md: reported, not an error). Registers the bank as
    model.fairy2i_bank and returns it with the list of layers left unconverted."""
    blocks = model
    for part in layers_attr.split("."):
        blocks = getattr(blocks, part)
    found = []  # (parent, attr, linear)
    skipped = []
    for b_index, block in enumerate(blocks):
        for name, mod in list(block.named_modules()):
            if not isinstance(mod, nn.Linear):
                continue
            full = f"{layers_attr}.{b_index}.{name}"
            if mod.in_features % 2 or mod.out_features % 2 or mod.bias is not None:
                skipped.append(full)
                continue
            parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
            found.append((parent, name.rsplit(".", 1)[-1], mod))
    shapes = []
    members = {}
    for parent, attr, mod in found:
        shape = (mod.out_features, mod.in_features)
        if shape not in members:
            shapes.append(shape)
            members[shape] = []
        members[shape].append((parent, attr, mod))
    weights = [torch.stack([mod.weight.detach().float() for _, _, mod in members[s]]) for s in shapes]
    bank = Fairy2iBank(weights, stages)
    for g, shape in enumerate(shapes):
        for i, (parent, attr, mod) in enumerate(members[shape]):
            setattr(parent, attr, Fairy2iLinear(bank, g, i, mod.in_features, mod.out_features))
    model.fairy2i_bank = bank
    return bank, skipped


# ---- the float64 per-element reference and the unit check ------------------------------------------

def _ref_code(re, im):
    """FAIRY2I.md section 2, literally: k = floor(2 theta/pi + 1/2) mod 4; an angle exactly on a diagonal
    goes counter-clockwise; 0 -> +1."""
    if re == 0 and im == 0:
        return 0
    if abs(re) == abs(im):
        return {(True, True): 1, (False, True): 2, (False, False): 3, (True, False): 0}[(re > 0, im > 0)]
    return math.floor(2 * math.atan2(im, re) / math.pi + 0.5) % 4


def reference_quantize_rebuild(R, stages):
    """R: float64 tensor [L, 2n, 2m] (on CPU). Entry by entry in Python floats. Returns (R_hat, codes,
    scales): codes[l][s][c] the code lists of stage s, c = 0 U, 1 W; scales[l][s][c] = (s_re, s_im)."""
    L, rows, cols = R.shape
    n, m = rows // 2, cols // 2
    out = torch.zeros_like(R)
    codes, scales = [], []
    for l in range(L):
        r = R[l].tolist()
        # e[c][i*m + j] = [re, im] of U (c = 0) or W (c = 1)
        e = [[None] * (n * m) for _ in range(2)]
        for i in range(n):
            for j in range(m):
                r11, r12, r21, r22 = r[i][j], r[i][m + j], r[n + i][j], r[n + i][m + j]
                e[0][i * m + j] = [(r11 + r22) / 2, (r21 - r12) / 2]
                e[1][i * m + j] = [(r11 - r22) / 2, (r12 + r21) / 2]
        hat = [[[0.0, 0.0] for _ in range(n * m)] for _ in range(2)]
        codes.append([])
        scales.append([])
        for _ in range(stages):
            stage_codes, stage_scales = [], []
            for c in range(2):
                ks = [_ref_code(re, im) for re, im in e[c]]
                a_set = [abs(e[c][x][0]) for x in range(n * m) if ks[x] % 2 == 0]
                b_set = [abs(e[c][x][1]) for x in range(n * m) if ks[x] % 2 == 1]
                s_re = max(math.fsum(a_set) / len(a_set), SCALE_MIN) if a_set else SCALE_MIN
                s_im = max(math.fsum(b_set) / len(b_set), SCALE_MIN) if b_set else SCALE_MIN
                for x in range(n * m):
                    v = [(s_re, 0.0), (0.0, s_im), (-s_re, 0.0), (0.0, -s_im)][ks[x]]
                    e[c][x][0] -= v[0]
                    e[c][x][1] -= v[1]
                    hat[c][x][0] += v[0]
                    hat[c][x][1] += v[1]
                stage_codes.append(ks)
                stage_scales.append((s_re, s_im))
            codes[l].append(stage_codes)
            scales[l].append(stage_scales)
        for i in range(n):
            for j in range(m):
                (ur, ui), (wr, wi) = hat[0][i * m + j], hat[1][i * m + j]
                out[l, i, j], out[l, i, m + j] = ur + wr, wi - ui
                out[l, n + i, j], out[l, n + i, m + j] = ui + wi, ur - wr
    return out, codes, scales


def _codes_of(R, stages):
    """The codes our vectorized quantizer picks, stage by stage: list of [2, L, n, m] int tensors."""
    re, im = split(R)
    out = []
    for _ in range(stages):
        d_re, d_im = phase_stage(re, im)
        k = torch.where(d_re > 0, 0, torch.where(d_re < 0, 2, torch.where(d_im > 0, 1, 3)))
        out.append(k)
        re, im = re - d_re, im - d_im
    return out


def _special_matrix():
    """[1, 2n, 2m] float64 whose U and W hold ties on all four diagonals, zeros of both signs, axis points,
    and (in one plane) only +-i codes, built through rebuild from small integers (exact)."""
    pts = [(1, 1), (-1, 1), (-1, -1), (1, -1), (0, 0), (-0.0, 0), (0, -0.0), (2, 0), (-2, 0), (0, 3),
           (0, -3), (-2, -0.0), (3, 1), (-1, 4), (2, 2), (-3, 3)]
    n, m = 4, 4
    u = torch.tensor(pts, dtype=torch.float64).reshape(n, m, 2)
    w = torch.tensor([(0, v) for v in (1, -2, 3, -1, 2, 5, -4, 1, 1, -1, 2, -2, 3, -3, 1, 2)],
                     dtype=torch.float64).reshape(n, m, 2)
    re = torch.stack((u[..., 0], w[..., 0]))[:, None]
    im = torch.stack((u[..., 1], w[..., 1]))[:, None]
    return rebuild(re, im)


def self_check(device="cpu", verbose=True):
    """The unit check (see the file's docstring). Raises AssertionError with the first failure; returns a
    dict of the errors measured."""
    report = {}
    gen = torch.Generator().manual_seed(1234)
    cases = [torch.randn(2, 6, 10, generator=gen, dtype=torch.float64),
             torch.randn(1, 4, 4, generator=gen, dtype=torch.float64),
             torch.randn(3, 8, 6, generator=gen, dtype=torch.float64) * 1e-3,
             _special_matrix(),
             torch.zeros(1, 2, 4, dtype=torch.float64)]
    for ci, R in enumerate(cases):
        back = rebuild(*split(R))
        err = (back - R).abs().max().item()
        assert err <= 1e-15 * max(1.0, R.abs().max().item()), f"case {ci}: split/rebuild round trip off by {err}"
        for stages in (1, 2, 3):
            ref_hat, ref_codes, ref_scales = reference_quantize_rebuild(R, stages)
            got = quantize_rebuild(R.to(device), stages).cpu()
            ks = [k.cpu() for k in _codes_of(R.to(device), stages)]
            L = R.shape[0]
            for l in range(L):
                for s in range(stages):
                    for c in range(2):
                        want = torch.tensor(ref_codes[l][s][c]).reshape(ks[s][c, l].shape)
                        bad = (ks[s][c, l] != want).nonzero()
                        assert bad.numel() == 0, (
                            f"case {ci} T={stages} layer {l} stage {s} {'UW'[c]}: code {ks[s][c, l][tuple(bad[0])]} "
                            f"!= reference {want[tuple(bad[0])]} at {tuple(bad[0].tolist())}")
            scale = max(ref_hat.abs().max().item(), 1e-300)
            rel = (got - ref_hat).abs().max().item() / scale
            assert rel <= 1e-12, f"case {ci} T={stages}: R_hat differs from the reference by {rel:.3g} (rel)"
            report[f"case{ci}_T{stages}_rel"] = rel
    # Residuals shrink stage by stage on non-degenerate input (FAIRY2I.md invariant 3).
    R = torch.randn(2, 64, 96, generator=gen, dtype=torch.float64)
    norms = [(R - quantize_rebuild(R.to(device), t).cpu()).norm().item() for t in range(0, 5)]
    assert all(b < a for a, b in zip(norms, norms[1:])), f"residual norms do not shrink: {norms}"
    report["residual_norms"] = norms
    # Relative MSE on Gaussian weights, the numbers FAIRY2I.md quotes (W1 ~ 0.36, W2 ~ 0.13).
    G = torch.randn(1, 512, 512, generator=gen).to(device)
    for t in (1, 2):
        rel_mse = ((G - quantize_rebuild(G, t)).pow(2).mean() / G.pow(2).mean()).item()
        report[f"gauss_rel_mse_T{t}"] = rel_mse
    # Identity STE: dL/dR equals dL/dR_hat exactly (bf16 R_hat: its gradient, cast to fp32).
    R = torch.randn(3, 8, 12, generator=gen).to(device).requires_grad_()
    G = torch.randn(3, 8, 12, generator=gen).to(device).to(torch.bfloat16)
    R_hat = QuantSTE.apply(R, 2, torch.bfloat16, quantize_rebuild)
    assert R_hat.dtype == torch.bfloat16
    (R_hat.float() * G.float()).sum().backward()
    assert torch.equal(R.grad, G.float()), "STE: gradient at R differs from the gradient at R_hat"
    # Through the bank and unbind, as the converted model uses it.
    bank = Fairy2iBank([torch.randn(3, 8, 12, generator=gen).to(device)], 2)
    bank.refresh()
    Gs = torch.randn(3, 8, 12, generator=gen).to(device)
    sum((bank.current[0][i] * Gs[i]).sum() for i in range(3)).backward()
    assert torch.equal(bank.groups[0].grad, Gs), "STE through the bank: gradient differs"
    if device != "cpu":
        # Device against CPU, fp32: the same codes except where rounding of a scale moves a later stage's
        # residual across a diagonal; count those.
        R = torch.randn(4, 256, 384, generator=gen)
        for t in (1, 2):
            cpu_k = _codes_of(R, t)
            dev_k = [k.cpu() for k in _codes_of(R.to(device), t)]
            diff = sum(int((a != b).sum()) for a, b in zip(cpu_k, dev_k))
            assert int((cpu_k[0] != dev_k[0]).sum()) == 0, "device and CPU disagree on stage-0 codes"
            report[f"device_code_mismatches_T{t}"] = diff
            hat_err = (quantize_rebuild(R.to(device), t).cpu() - quantize_rebuild(R, t)).abs().max().item()
            report[f"device_rhat_max_abs_T{t}"] = hat_err
    if verbose:
        print("fairy2i_torch self-check passed:", report)
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_printoptions(precision=6)
    self_check(args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
