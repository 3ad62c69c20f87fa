"""GenerativeRecommender: the base of every code-generating recommender (TIGER, LC-Rec).

The base owns everything that is the same for both generators:

* the tokenizer hook: ``tokenize(config, dataset)`` (a class method: the training split -> unique
  ``ItemCodes``), which the pipeline (``quick_start.build_model``) calls once before it builds the model;
  ``__init__`` only receives the codes and keeps them in its state (buffers ``item_codes_table``,
  ``codebook_sizes``), so every checkpoint carries the codes it was trained on;
* the token layout: ``item_code_tokens`` buffer ``[n_items, T]`` (see
  ``recbole_letter.generation.trie.item_code_token_table``) and the ``CodeTrie`` built from it
  (rebuilt lazily when the buffer changes, e.g. on a checkpoint load, or moves device);
* history -> code tokens (``history_code_tokens``);
* the ranking-guided loss (``calculate_loss``: cross-entropy of ``logits / tau`` over the whole
  vocabulary, targets = the next item's ``T`` tokens, ``pad`` positions ignored);
* ``predict``: the log-likelihood of the item's tokens (``tau`` = 1);
* ``full_sort_predict``: constrained beam search -> ``[B, n_items]`` scores, beam log-probabilities
  for the generated items and ``-inf`` for all others.

Hooks a subclass implements
---------------------------
``code_logits(item_seq, item_seq_len, target_tokens) -> FloatTensor [B, T, V]``
    Teacher-forced logits: position ``t`` predicts ``target_tokens[:, t]`` given the user's history
    and ``target_tokens[:, :t]``. ``target_tokens`` is ``[B, T]`` (``pad`` after ``eos`` in uneven
    layouts). Used by the loss and by ``predict``.
``build_step_fn(item_seq, item_seq_len, workspace=None) -> step_fn``
    The decoding step function of ``recbole_letter.generation.beam_search`` for these ``B`` users:
    ``step_fn(None, None) -> [B, V]``, then ``step_fn(last_tokens [R], beam_origin [R]) -> [R, V]``
    (reorder the cache by ``beam_origin`` first). Called under ``torch.no_grad`` in eval mode.
    ``workspace`` is a dict that ``generate_items`` passes to every chunk of users one of its decoding threads
    takes (one dict per thread): a step function may keep large buffers there (its KV cache) and reuse them for
    that thread's next chunk.

Token layout: a subclass with its own vocabulary (an LLM) passes ``first_code_token`` (id of the
first added code token), ``eos_token_id`` and ``pad_token_id`` to ``__init__``; the default is
pad = 0, eos = 1, codes from 2 (``vocab_size`` = 2 + sum of codebook sizes). ``self.vocab_size`` is
``first_code_token + sum(codebook_sizes)``: the smallest vocabulary holding every code token.

Config keys read here: ``tau`` (loss temperature), ``beam_size`` (>= max ``topk``), ``enable_amp`` /
``amp_dtype`` (decoding autocasts as training does), ``beam_batch_size`` (users decoded at once in
``full_sort_predict``), ``decode_workers`` (threads that decode those chunks side by side, sharing torch's
threads out; ``~`` = ``decode_workers_on``), ``exclude_seen_items`` (beam search skips the items a user met in the training
split and history, see ``recbole_letter.model.seen_items``), ``length_buckets`` (training batches run as
this many sub-batches of similar history length, each padded only to its own longest history: the same
loss and gradients for less padding; ``~`` = ``default_length_buckets``), ``item_codes_file`` and the tokenizer's keys (through
``get_item_codes``).
"""

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_letter.common import amp_dtype
from recbole_letter.generation import (
    EOS_TOKEN_ID,
    FIRST_CODE_TOKEN,
    PAD_TOKEN_ID,
    CodeTrie,
    constrained_beam_search,
    item_code_token_table,
)
from recbole_letter.model.seen_items import SeenItems
from recbole_letter.tokenizer import get_item_codes
from recbole_letter.tokenizer.item_codes import ItemCodes


# decode_workers: ~ uses at most this many threads (measured at 2, the most this project's machines have)
MAX_AUTO_DECODE_WORKERS = 4


def in_worker_threads(work, n_tasks, workers):
    """``work(claimed)`` in ``min(workers, n_tasks)`` threads, where ``claimed`` yields task indices in
    ``range(n_tasks)`` that no other thread has taken (the next free one each time: long and short tasks
    balance out). More than one thread: each sets its share of torch's threads (``threads // workers``, at least
    one) before its first task, the first error in any thread stops the others at their next task and is raised
    here once all have stopped, and torch's count is the caller's again after. One thread: ``work`` runs in the
    calling thread, as a plain loop would."""
    workers = min(int(workers), n_tasks)
    if workers <= 1:
        work(iter(range(n_tasks)))
        return
    taken, stop, errors = itertools.count(), threading.Event(), []  # next() on a count is atomic under the GIL
    threads = torch.get_num_threads()
    share = max(1, threads // workers)

    def claimed():
        while not stop.is_set() and (index := next(taken)) < n_tasks:
            yield index

    def worker():
        try:
            # in this thread itself: a thread's torch threads are settled at its first parallel operation, which
            # a product alone may not be (docs/generation.md, "Chunks in threads")
            torch.set_num_threads(share)
            work(claimed())
        except BaseException as error:
            errors.append(error)
            stop.set()

    try:
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(worker) for _ in range(workers)]
            try:
                wait(futures)
            except BaseException:  # Ctrl-C while waiting: the threads stop at their next task
                stop.set()
                raise
        if errors:
            raise errors[0]
    finally:
        torch.set_num_threads(threads)


def at_least_float32(logits):
    """``logits`` in float32, or float64 where they are float64 (autocast's half types go up; a float64
    reference model stays exact)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class GenerativeRecommender(SequentialRecommender):
    def __init__(self, config, dataset, item_codes, first_code_token=FIRST_CODE_TOKEN, eos_token_id=EOS_TOKEN_ID,
                 pad_token_id=PAD_TOKEN_ID):
        if not isinstance(item_codes, ItemCodes):
            raise TypeError(f"{type(self).__name__} needs item_codes (ItemCodes), got {type(item_codes).__name__}: "
                            f"build it with recbole_letter.quick_start.build_model, which runs the tokenizer stage "
                            f"({type(self).__name__}.tokenize) first")
        super().__init__(config, dataset)
        self.tau = float(config["tau"])
        self.beam_size = int(config["beam_size"])
        self.beam_batch_size = int(config["beam_batch_size"])
        self.decode_workers = config["decode_workers"]  # None: decode_workers_on decides at each call
        if self.decode_workers is not None and self.decode_workers > 1 and config["device"] is not None \
                and torch.device(config["device"]).type != "cpu":
            raise ValueError(f"decode_workers: {self.decode_workers} decodes chunks in CPU threads; on "
                             f"{config['device']} leave it ~ (one chunk after another)")
        self.length_buckets = int(config["length_buckets"] or self.default_length_buckets(config["device"]))
        # the trainer autocasts calculate_loss to amp_dtype under enable_amp; decoding follows the same switch
        self.enable_amp = bool(config["enable_amp"])
        self.amp_dtype = amp_dtype(config)
        topk = config["topk"]
        max_topk = max(topk) if isinstance(topk, (list, tuple)) else int(topk or 0)
        if self.beam_size < max_topk:
            raise ValueError(f"beam_size ({self.beam_size}) must be >= the largest topk ({max_topk})")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.length_buckets < 1:
            raise ValueError(f"length_buckets must be >= 1, got {self.length_buckets}")

        self.item_codes = item_codes
        if self.item_codes.n_items != self.n_items:
            raise ValueError(f"item codes cover {self.item_codes.n_items} items, the dataset has {self.n_items}")
        self.pad_token_id = int(pad_token_id)
        self.eos_token_id = int(eos_token_id)
        self.first_code_token = int(first_code_token)
        self.vocab_size = self.first_code_token + sum(self.item_codes.codebook_sizes)
        tokens = item_code_token_table(self.item_codes.codes, self.item_codes.codebook_sizes,
                                       self.first_code_token, self.eos_token_id, self.pad_token_id)
        self.register_buffer("item_code_tokens", tokens)  # [n_items, T]
        # the codes themselves, so that a checkpoint can rebuild the model without the tokenizer
        self.register_buffer("item_codes_table", torch.from_numpy(item_codes.codes.copy()))  # [n_items, L]
        self.register_buffer("codebook_sizes", torch.tensor(item_codes.codebook_sizes, dtype=torch.long))  # [L]
        self.code_len = tokens.shape[1]  # T: tokens per item (codes, + eos when depths differ)
        self._trie = None
        self._trie_key = None
        self.seen_items = SeenItems(dataset) if config["exclude_seen_items"] else None

    @classmethod
    def tokenize(cls, config, dataset):
        """The tokenizer hook: unique item codes for ``dataset`` (the training split), from
        ``item_codes_file`` or the LETTER tokenizer (trained, or read back from its cache).
        ``quick_start.tokenizer_stage`` calls it once per run, before the model is built.

        Args:
            config: the run's config (the tokenizer's keys: ``properties/tokenizer.yaml``).
            dataset: the training split.

        Returns:
            An ``ItemCodes`` for every item id of ``dataset`` (the padding id 0 included).
        """
        return get_item_codes(config, dataset)

    @staticmethod
    def codes_from_state_dict(state_dict):
        """The ``ItemCodes`` a checkpoint's ``state_dict`` was trained on."""
        return ItemCodes(state_dict["item_codes_table"].cpu().numpy(), state_dict["codebook_sizes"].tolist())

    @staticmethod
    def default_length_buckets(device):
        """``length_buckets: ~``: 8 on a CPU, where padding costs arithmetic, 1 on a GPU, where a padded batch
        is no slower (launch-bound); the figures are in docs/generation.md."""
        return 1 if device is not None and torch.device(device).type == "cuda" else 8

    def decode_workers_on(self, device):
        """How many threads ``generate_items`` decodes its chunks in: ``decode_workers``, or for ``~`` on a CPU
        the largest divisor of torch's thread count up to ``MAX_AUTO_DECODE_WORKERS`` (2 on 2 cores), and 1
        elsewhere. The threads share torch's threads out (one each on 2 cores): two chunks at one torch thread
        each decode faster than one chunk at two (docs/generation.md, "Chunks in threads")."""
        if self.decode_workers is not None:
            return int(self.decode_workers)
        if torch.device(device).type != "cpu":
            return 1
        threads = torch.get_num_threads()
        # the most threads, up to the cap, that share torch's threads out evenly (6 -> 3 of 2; 5 -> 1 of 5)
        return max(n for n in range(1, MAX_AUTO_DECODE_WORKERS + 1) if threads % n == 0)

    @staticmethod
    def cpu_kernels_setting(value, device):
        """A ``*_cpu_kernels`` key (``t5_cpu_kernels``, ``llm_cpu_kernels``): ``~`` = on when the model
        trains on a CPU."""
        return torch.device(device).type == "cpu" if value is None else bool(value)

    # ---- token helpers --------------------------------------------------------------------------
    @property
    def trie(self):
        """The ``CodeTrie`` of ``item_code_tokens`` on the buffer's device (rebuilt when it changes)."""
        buf = self.item_code_tokens
        key = (buf.device, buf._version, buf.data_ptr())
        if self._trie is None or self._trie_key != key:
            self._trie = CodeTrie(buf, pad_token_id=self.pad_token_id).to(buf.device)
            self._trie_key = key
        return self._trie

    def history_code_tokens(self, item_seq, item_seq_len=None):
        """History items ``[B, N]`` (0-padded) -> code tokens ``[B, N * T]`` and their mask (bool).

        Each item contributes its codes in order (no ``eos``); padding items and the ``pad`` of shorter
        items are masked out.
        """
        tokens = self.item_code_tokens[item_seq]  # [B, N, T]
        if self.code_len > self.item_codes.n_levels:  # uneven layout: drop the eos column's eos
            tokens = tokens.masked_fill(tokens == self.eos_token_id, self.pad_token_id)
        tokens = tokens.flatten(1)  # [B, N * T]
        return tokens, tokens != self.pad_token_id

    # ---- hooks ----------------------------------------------------------------------------------
    def code_logits(self, item_seq, item_seq_len, target_tokens):
        raise NotImplementedError

    def build_step_fn(self, item_seq, item_seq_len, workspace=None):
        raise NotImplementedError

    # ---- RecBole interface ----------------------------------------------------------------------
    def calculate_loss(self, interaction):
        return sum(self.loss_chunks(interaction))

    def loss_chunks(self, interaction):
        """``calculate_loss`` in parts, computed one at a time: yields each length bucket's share of the
        batch loss (its tokens' loss sum over the batch's token count; the whole batch's mean when it is
        not split), so ``sum(loss_chunks(batch)) == calculate_loss(batch)``. ``LetterTrainer`` runs the
        backward pass of each part before the next part's forward: the activations of one bucket are kept
        at a time instead of the whole batch's."""
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        targets = self.item_code_tokens[interaction[self.POS_ITEM_ID]]  # [B, T]
        if self.length_buckets == 1 or item_seq.shape[0] < 2 * self.length_buckets:
            yield self.ranking_loss(self.code_logits(item_seq, item_seq_len, targets), targets)
            return
        # sub-batches of similar history length: each is padded (trimmed) to its own longest history,
        # and the token-mean over the whole batch is kept, so loss and gradients match one big batch
        n_tokens = (targets != self.pad_token_id).sum().clamp(min=1)
        for rows in torch.argsort(item_seq_len).chunk(self.length_buckets):
            logits = self.code_logits(item_seq[rows], item_seq_len[rows], targets[rows])
            yield self.ranking_loss(logits, targets[rows], reduction="sum") / n_tokens

    def ranking_loss(self, logits, targets, reduction="mean"):
        """Cross-entropy of ``logits / tau`` over the whole vocabulary (``pad`` targets ignored)."""
        return F.cross_entropy((at_least_float32(logits) / self.tau).flatten(0, 1), targets.flatten(),
                               ignore_index=self.pad_token_id, reduction=reduction)

    def sequence_log_likelihood(self, item_seq, item_seq_len, items):
        """``log p(item's tokens | history)`` for one item per user: ``[B]``; same scale as beam scores."""
        targets = self.item_code_tokens[items]  # [B, T]
        log_probs = F.log_softmax(at_least_float32(self.code_logits(item_seq, item_seq_len, targets)), dim=-1)
        token_log_prob = log_probs.gather(2, targets.unsqueeze(2)).squeeze(2)  # [B, T]
        counted = targets != self.pad_token_id
        return (token_log_prob * counted).sum(dim=1)

    def predict(self, interaction):
        return self.sequence_log_likelihood(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                                            interaction[self.ITEM_ID])

    @torch.no_grad()
    def generate_items(self, item_seq, item_seq_len, beam_size=None, excluded=None):
        """Constrained beam search for a batch of users -> ``(item_ids [B, K], scores [B, K])``.

        ``excluded`` (optional BoolTensor ``[B, n_items]``): items each user must not get."""
        beam_size = beam_size or self.beam_size
        trie = self.trie
        # decode users of similar history length together (less padding in every chunk), the longest first: the
        # chunks that take longest are then not left to the end while other decoding threads idle
        order = torch.argsort(item_seq_len, stable=True, descending=True)
        chunks = order.split(self.beam_batch_size)
        results = [None] * len(chunks)

        def decode(claimed):
            workspace = {}  # buffers a step function keeps for the next chunk (see build_step_fn)
            # grad mode and autocast are per thread: set in each worker
            with torch.no_grad(), torch.autocast(item_seq.device.type, dtype=self.amp_dtype, enabled=self.enable_amp):
                for index in claimed:
                    chunk = chunks[index]
                    step_fn = self.build_step_fn(item_seq[chunk], item_seq_len[chunk], workspace)
                    chunk_excluded = None if excluded is None else excluded[chunk]
                    results[index] = constrained_beam_search(step_fn, trie, len(chunk), beam_size, chunk_excluded)

        in_worker_threads(decode, len(chunks), self.decode_workers_on(item_seq.device))
        restore = torch.argsort(order)
        return torch.cat([ids for ids, _ in results])[restore], torch.cat([s for _, s in results])[restore]

    def excluded_items(self, interaction):
        """The items beam search keeps out for ``interaction``'s users under ``exclude_seen_items`` (their
        training-split items and histories, ``[B, n_items]``), else ``None``."""
        if self.seen_items is None:
            return None
        return self.seen_items.mask(interaction[self.USER_ID], interaction[self.ITEM_SEQ])

    def full_sort_predict(self, interaction):
        item_ids, beam_scores = self.generate_items(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                                                    excluded=self.excluded_items(interaction))
        scores = torch.full((item_ids.shape[0], self.n_items), float("-inf"), device=item_ids.device)
        # unfilled beams carry item 0 with -inf: scattering them leaves the padding item at -inf
        return scores.scatter_(1, item_ids, beam_scores)
