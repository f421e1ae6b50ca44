"""PTD vs S4D-LegS: how close each diagonal init's transfer function is to HiPPO-LegS's.

    python -m benchmarks.ptd [--n 32 64 128 256] [--eps 1e-3 1e-2 1e-1]

For HiPPO-LegS (A, B) of size n and a fixed random C, compares G(iω) = C (iω − A)⁻¹ B with
- S4D-LegS: (Λ, B/2, C V) of ``nplr("legs", n)``, the diagonal of the normal part with the S4D
  paper's B/2 (the scale at which its kernel approaches S4-LegS's), and
- PTD: (Λ, V⁻¹ B, C V) of ``perturb_then_diagonalize(A, eps)``, the eigenbasis of A + E.
Printed per (n, eps): κ(V) of ``np.linalg.eig(A)`` itself (eps = 0) and of A + E; the relative
output error ||(G̃ − G) U|| / ||G U|| for |U(ω)| a smooth input (unit-width Gaussian) plus flat
high-frequency noise (0.1 on 20 <= ω <= π / 1e-3, the band of a sequence sampled at Δ = 1e-3),
and for the smooth input alone; and the relative sup error max |G̃ − G| / max |G| over the same
grid plus the frequencies Im Λ, where S4D-LegS resonates. The PTD paper's claim: S4D-LegS
converges to HiPPO-LegS on smooth inputs only; PTD converges uniformly, at error O(eps).
"""

import argparse

import numpy as np

from ssm.hippo import (
    nplr,
    perturb_then_diagonalize,
    transfer_function,
    transition,
    with_conjugates,
)

OMEGA = np.linspace(0.0, np.pi / 1e-3, 12_001)
SMOOTH = np.exp(-(OMEGA**2) / 2)
NOISY = SMOOTH + 0.1 * (OMEGA >= 20)


def compare(n: int, eps_values, seed: int = 0):
    """Rows (n, eps, κ(V) eps=0, κ(V) PTD, then errors of PTD and S4D: noisy, smooth, sup)."""
    A, B = transition("legs", n)
    C = np.random.default_rng(seed).standard_normal(n) / np.sqrt(n)
    Lambda, _, B_eig, V = nplr("legs", n)
    grid = np.concatenate([OMEGA, Lambda.imag])  # the input spectrum lives on OMEGA only
    G = transfer_function(A, B, C, grid)
    G_s4d = transfer_function(with_conjugates(Lambda), with_conjugates(B_eig) / 2, C @ V, grid)
    kappa_eig = np.linalg.cond(np.linalg.eig(A)[1])

    def errors(G_init):
        on_input = slice(0, len(OMEGA))
        output = [
            np.linalg.norm((G_init - G)[on_input] * U) / np.linalg.norm(G[on_input] * U)
            for U in (NOISY, SMOOTH)
        ]
        return [*output, np.abs(G_init - G).max() / np.abs(G).max()]

    rows = []
    for eps in eps_values:
        lam_ptd, V_ptd = perturb_then_diagonalize(A, eps, seed)
        G_ptd = transfer_function(lam_ptd, np.linalg.solve(V_ptd, B), C @ V_ptd, grid)
        ptd, s4d = errors(G_ptd), errors(G_s4d)
        pairs = [x for pair in zip(ptd, s4d, strict=True) for x in pair]
        rows.append([n, eps, kappa_eig, np.linalg.cond(V_ptd), *pairs])
    return rows


COLUMNS = [  # (name, format) of each value of a ``compare`` row
    ("n", "4d"), ("eps", "7.0e"), ("κ(V) eig(A)", "12.1e"), ("κ(V) PTD", "10.1e"),
    ("noisy PTD", "10.1e"), ("noisy S4D", "10.1e"), ("smooth PTD", "11.1e"),
    ("smooth S4D", "11.1e"), ("sup PTD", "9.1e"), ("sup S4D", "9.1e"),
]  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1])
    args = parser.parse_args()
    widths = [int(fmt.split(".")[0].rstrip("d")) for _, fmt in COLUMNS]
    print(" ".join(f"{name:>{width}}" for (name, _), width in zip(COLUMNS, widths, strict=True)))
    for n in args.n:
        for row in compare(n, args.eps):
            print(" ".join(f"{x:{fmt}}" for x, (_, fmt) in zip(row, COLUMNS, strict=True)))


if __name__ == "__main__":
    main()
