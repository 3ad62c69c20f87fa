"""SeenItems: the items each user met in the training split, for ``exclude_seen_items``.

RecBole's full-ranking evaluation removes a user's past items from the ranking for general models
(``Pop``, ``BPR``, ``LightGCN``: ``history_index``) but not for sequential ones, where an item may come
again. On data where no (user, item) pair repeats (ml-100k: one rating per user and movie) that gives
general models an advantage no sequential model has. ``exclude_seen_items: True`` applies the general
models' rule to sequential models too: the trainer sets the scores of seen items to ``-inf``, and the
generators also keep them out of beam search, so no beam is spent on an item that cannot count.
"""

import numpy as np
import torch


class SeenItems:
    """Per user, the items of the training split: targets and histories of its rows (``[user] -> items``).

    Args:
        dataset: RecBole's training split of a sequential dataset (``item_id_list`` holds each row's history).
    """

    def __init__(self, dataset):
        inter = dataset.inter_feat
        users = inter[dataset.uid_field].numpy().astype(np.int64)
        items = inter[dataset.iid_field].numpy().astype(np.int64)
        keys = [users * dataset.item_num + items]
        list_field = dataset.iid_field + dataset.config["LIST_SUFFIX"]
        if list_field in inter:  # the first item of a user is in histories only, never a target
            lists = inter[list_field].numpy()
            rows, cols = np.nonzero(lists)
            keys.append(users[rows] * dataset.item_num + lists[rows, cols].astype(np.int64))
        keys = np.unique(np.concatenate(keys))  # sorted by user, then item
        self.n_items = dataset.item_num
        self.items = torch.from_numpy(keys % dataset.item_num)
        self.indptr = torch.from_numpy(np.searchsorted(keys // dataset.item_num, np.arange(dataset.user_num + 1)))

    def mask(self, users, item_seq=None):
        """BoolTensor ``[B, n_items]``: True for the items user ``users[b]`` met in the training split and,
        when given, in ``item_seq[b]`` (a history that may reach past the split, e.g. the validation item
        at test time). Column 0 (padding) stays False. On the device of ``users``."""
        users_cpu = users.cpu()
        starts, ends = self.indptr[users_cpu], self.indptr[users_cpu + 1]
        counts = ends - starts
        rows = torch.repeat_interleave(torch.arange(len(users_cpu)), counts)
        cols = torch.cat([self.items[s:e] for s, e in zip(starts.tolist(), ends.tolist())])
        seen = torch.zeros(len(users_cpu), self.n_items, dtype=torch.bool)
        seen[rows, cols] = True
        seen = seen.to(users.device)
        if item_seq is not None:
            seen.scatter_(1, item_seq, True)
            seen[:, 0] = False
        return seen
