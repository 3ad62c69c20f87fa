"""LETTER's three tokenizer losses (paper Sec. 3.1): L = L_sem + alpha L_CF + beta L_div."""

import numpy as np
import torch
import torch.nn.functional as F

from recbole_letter.tokenizer.rqvae import balanced_kmeans


def semantic_loss(semantic_emb, reconstructed, quant_loss):
    """L_sem: reconstruction ||s - s_hat||^2 plus the (level-averaged) codebook + commitment terms."""
    return F.mse_loss(reconstructed, semantic_emb) + quant_loss


def collaborative_loss(z_hat, cf_emb):
    """L_CF: in-batch InfoNCE, softmax over <z_hat_i, h_j> (j in batch), positive j = i.

    ``z_hat`` is the straight-through sum, so the gradient reaches only the encoder; ``h`` is fixed.
    No temperature, no normalisation (as released).
    """
    logits = z_hat @ cf_emb.T  # [B, B]
    return F.cross_entropy(logits, torch.arange(len(z_hat), device=z_hat.device))


class DiversityClusters:
    """Constrained k-means clusters of each level's code vectors, with vectorised positive sampling.

    For item i with code c at level l, the positive is a uniformly random *other* code of c's cluster.
    ``members[l]`` is ``[K, max_size]`` (padded), ``position[l][c]`` is c's column in its cluster's row;
    drawing ``r`` in ``[0, size - 1)`` and skipping c's own column gives the positive without a loop.
    """

    def __init__(self, codebooks, num_clusters, size_min, size_max, seed):
        self.members, self.cluster_of, self.position, self.sizes = [], [], [], []
        for level, codebook in enumerate(codebooks.detach().cpu().numpy()):
            _, labels = balanced_kmeans(codebook, num_clusters, size_min, size_max, seed + level, n_init=1, max_iter=50)
            order = np.argsort(labels, kind="stable")
            sizes = np.bincount(labels, minlength=num_clusters)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            position = np.empty(len(labels), dtype=np.int64)
            position[order] = np.arange(len(labels)) - starts[labels[order]]
            members = np.zeros((num_clusters, sizes.max()), dtype=np.int64)
            members[labels[order], position[order]] = order
            self.members.append(torch.from_numpy(members))
            self.cluster_of.append(torch.from_numpy(labels))
            self.position.append(torch.from_numpy(position))
            self.sizes.append(torch.from_numpy(sizes))

    def sample_positives(self, level, codes, generator=None):
        """A random other code of the same cluster for each entry of ``codes`` [B]."""
        cluster = self.cluster_of[level][codes]
        size = self.sizes[level][cluster]
        draw = (torch.rand(len(codes), generator=generator) * (size - 1)).long()  # [0, size - 2]
        draw = draw + (draw >= self.position[level][codes]).long()  # skip the code itself
        return self.members[level][cluster, draw]


def diversity_loss(picked, codebooks, codes, clusters, generator=None):
    """L_div averaged over levels: pull each chosen code toward a random code of its cluster.

    Softmax over all codes of the level except the chosen one; ``picked`` and ``codebooks`` are codebook
    rows, so the gradient reaches only the codebooks.
    """
    losses = []
    for level in range(codebooks.shape[0]):
        code = codes[:, level].cpu()
        logits = picked[:, level] @ codebooks[level].T  # [B, N]
        logits = logits.masked_fill(F.one_hot(codes[:, level], codebooks.shape[1]).bool(), float("-inf"))
        positives = clusters.sample_positives(level, code, generator).to(logits.device)
        losses.append(F.cross_entropy(logits, positives))
    return torch.stack(losses).mean()
