"""RQ-VAE: MLP encoder, residual quantiser (L codebooks of N codes, dim d), mirrored MLP decoder.

Level l picks ``c_l = argmin_i ||r_{l-1} - e_i||^2`` and passes ``r_l = r_{l-1} - e_{c_l}`` on (``r_0 = z``);
``z_hat = sum_l e_{c_l}`` reaches the decoder through the straight-through estimator. The last level can
pick its codes with Sinkhorn-Knopp instead of argmin (``sinkhorn_epsilon > 0``), which spreads a batch
evenly over the codebook (LETTER release: epsilon 0.003, 50 iterations, last level only).
"""

import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(dims):
    """Linear layers ``dims[0] -> ... -> dims[-1]`` with ReLU between them (none after the last)."""
    layers = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def sinkhorn_codes(distances, epsilon, iterations):
    """Balanced code choice: argmax of the Sinkhorn-Knopp transport plan (each code gets mass 1/N, each
    item 1/B).

    ``distances`` [B, N] are first centred and scaled to [-1, 1] (as the release does), so epsilon has
    the same meaning for any embedding scale. The plan is ``diag(u) K diag(v)`` with the Gibbs kernel
    ``K = exp(-scaled / epsilon)``; each Sinkhorn-Knopp step (columns to 1/N, then rows to 1/B) only
    rescales ``v`` and ``u``, so an iteration is two matrix-vector products instead of four passes over
    the [B, N] plan (the same codes). Kept in float64: exp(1 / 0.003) overflows float32.
    A row's argmax of the plan is the argmax of ``K[i] * v`` (``u_i`` is a positive row factor).
    """
    d_max, d_min = distances.max(), distances.min()
    middle = (d_max + d_min) / 2
    scaled = (distances - middle) / (d_max - middle + 1e-5)
    kernel = torch.exp(-scaled.double() / epsilon)  # [B, N], within [e^-1/eps, e^1/eps]
    n_items, n_codes = kernel.shape
    u = torch.ones(n_items, dtype=kernel.dtype, device=kernel.device)  # [B]
    v = torch.ones(n_codes, dtype=kernel.dtype, device=kernel.device)  # [N]
    for _ in range(iterations):
        v = 1.0 / ((kernel.T @ u) * n_codes)  # codes: column sums u^T K v = 1/N
        u = 1.0 / ((kernel @ v) * n_items)  # items: row sums = 1/B
    return (kernel * v).argmax(dim=1)


def balanced_kmeans(points, n_clusters, size_min, size_max, seed, n_init=1, max_iter=100):
    """Size-constrained k-means (k-means-constrained): ``(centers [K, d], labels [n])`` as numpy."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < n_clusters * size_min or len(points) > n_clusters * size_max:
        raise ValueError(
            f"cannot split {len(points)} points into {n_clusters} clusters of size {size_min}..{size_max}"
        )
    # here, not at the top: it pulls in OR-Tools, which only tokenizer training needs (a run on a given
    # codes file, e.g. on a GPU machine without it, never imports it)
    from k_means_constrained import KMeansConstrained

    kmeans = KMeansConstrained(
        n_clusters=n_clusters, size_min=size_min, size_max=size_max, n_init=n_init, max_iter=max_iter, random_state=seed
    )
    labels = kmeans.fit_predict(points)
    return kmeans.cluster_centers_.astype(np.float32), labels.astype(np.int64)


class ResidualQuantizer(nn.Module):
    def __init__(self, num_levels, codebook_size, code_dim, sinkhorn_epsilon=0.0, sinkhorn_iters=50, mu=0.25):
        super().__init__()
        self.num_levels = num_levels
        self.codebook_size = codebook_size
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_iters = sinkhorn_iters
        self.mu = mu  # commitment weight
        self.codebooks = nn.Parameter(torch.randn(num_levels, codebook_size, code_dim) * 0.01)  # [L, N, d]
        self.sinkhorn_seconds = 0.0  # time spent in Sinkhorn (benchmark split)

    @torch.no_grad()
    def init_codebooks(self, z, seed):
        """Balanced k-means of each level's residuals (the untrained encoder's output) -> codebooks."""
        residual = z.detach().cpu().numpy()
        n = len(residual)
        size_min, size_max = n // self.codebook_size, math.ceil(n / self.codebook_size)
        for level in range(self.num_levels):
            centers, labels = balanced_kmeans(residual, self.codebook_size, size_min, size_max, seed + level)
            self.codebooks.data[level] = torch.from_numpy(centers)
            residual = residual - centers[labels]

    def forward(self, z, use_sinkhorn=True):
        """``z`` [B, d] -> z_hat (straight-through) [B, d], codes [B, L], quantisation loss, picked [B, L, d],
        residuals [B, L, d].

        ``picked`` are the chosen codebook rows with their gradient (for the diversity loss); ``residuals``
        are each level's (detached) input r_{l-1}, for re-seeding dead codes.
        """
        residual = z
        codes, picked, level_losses, residuals = [], [], [], []
        z_hat = torch.zeros_like(z)
        for level in range(self.num_levels):
            codebook = self.codebooks[level]  # [N, d]
            residuals.append(residual.detach())
            distances = torch.cdist(residual.detach(), codebook.detach()).pow(2)  # [B, N]
            last = level == self.num_levels - 1
            if last and use_sinkhorn and self.sinkhorn_epsilon > 0:
                start = time.perf_counter()
                code = sinkhorn_codes(distances, self.sinkhorn_epsilon, self.sinkhorn_iters)
                self.sinkhorn_seconds += time.perf_counter() - start
            else:
                code = distances.argmin(dim=1)
            chosen = codebook[code]  # [B, d]
            # codebook moves toward the (fixed) residual; the encoder commits to the (fixed) code
            level_losses.append(F.mse_loss(chosen, residual.detach()) + self.mu * F.mse_loss(residual, chosen.detach()))
            z_hat = z_hat + chosen
            residual = residual - chosen.detach()
            codes.append(code)
            picked.append(chosen)
        z_hat_st = z + (z_hat - z).detach()  # straight-through: forward = z_hat, gradient -> encoder
        return (z_hat_st, torch.stack(codes, dim=1), torch.stack(level_losses).mean(), torch.stack(picked, dim=1),
                torch.stack(residuals, dim=1))

    @torch.no_grad()
    def reseed_dead_codes(self, counts, residuals, generator, optimizer=None):
        """Move every code that no item picked (``counts`` [L, N] == 0) onto a random residual of its level.

        ``residuals`` [B, L, d] are recent level inputs; a re-seeded code starts exactly on a real residual,
        so it is picked again (it typically splits a crowded code). Adam's moments of the moved rows are
        zeroed. This touches the parameters only, not the loss. Returns the number of codes moved per level.
        """
        moved = []
        state = optimizer.state.get(self.codebooks, {}) if optimizer is not None else {}
        for level in range(self.num_levels):
            dead = torch.nonzero(counts[level] == 0).flatten()
            moved.append(len(dead))
            if len(dead) == 0:
                continue
            rows = torch.randperm(len(residuals), generator=generator)[: len(dead)]
            if len(rows) < len(dead):
                rows = torch.randint(len(residuals), (len(dead),), generator=generator)
            self.codebooks.data[level, dead] = residuals[rows, level].to(self.codebooks.dtype)
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in state:
                    state[moment][level, dead] = 0.0
        return moved


class RQVAE(nn.Module):
    """Encoder ``s -> z``, residual quantiser ``z -> z_hat``, decoder ``z_hat -> s_hat``."""

    def __init__(self, input_dim, hidden_layers, code_dim, num_levels, codebook_size, sinkhorn_epsilon, sinkhorn_iters,
                 commitment_weight=0.25):
        super().__init__()
        hidden_layers = [int(h) for h in hidden_layers]
        self.encoder = mlp([input_dim] + hidden_layers + [code_dim])
        self.quantizer = ResidualQuantizer(
            num_levels, codebook_size, code_dim, sinkhorn_epsilon, sinkhorn_iters, mu=commitment_weight
        )
        self.decoder = mlp([code_dim] + hidden_layers[::-1] + [input_dim])

    def forward(self, semantic_emb, use_sinkhorn=True):
        z = self.encoder(semantic_emb)  # [B, d]
        z_hat, codes, quant_loss, picked, residuals = self.quantizer(z, use_sinkhorn)
        return {"z": z, "z_hat": z_hat, "codes": codes, "quant_loss": quant_loss, "picked": picked,
                "residuals": residuals, "s_hat": self.decoder(z_hat)}  # fmt: skip

    @torch.no_grad()
    def encode_codes(self, semantic_emb, use_sinkhorn=False, batch_size=4096):
        """Codes [n, L] and z_hat [n, d] for all rows (eval mode, batched)."""
        codes, z_hats = [], []
        for start in range(0, len(semantic_emb), batch_size):
            out = self.forward(semantic_emb[start : start + batch_size], use_sinkhorn)
            codes.append(out["codes"])
            z_hats.append(out["z_hat"])
        return torch.cat(codes), torch.cat(z_hats)

