"""The packing plan as a training dataset: packs encoded lazily, in the dealt order, length-checked.

``dataset[i]`` reads the pack's records from the JSONL (byte offsets, no records held in memory),
encodes them with the template in the dataloader worker, and checks each encoded length against
the planned length: a mismatch is a hard error naming ``path:line``. The packing template's
collator joins them into one isolated row (``swift_plugins.training.template``).

    SamplePlan (swift_plugins.packing.samples)      epoch e: epoch_order(packs, seed, e)
      -> PackedDataset[i] = encode(order[i])         rank r reads i = r, r + W, ... (unshuffled sampler)

Accounting (logged and written to ``<output_dir>/packing/summary.json``): records read = skipped +
samples (+ extra pieces from splitting); samples = packed + dropped, each dropped one listed with
its reason in ``dropped_samples.jsonl``; every pack once per epoch (the pack count is a multiple of
the world size, reached by splitting packs, never by dropping or repeating them).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Optional

from swift_plugins.config.resolve import world_size_from_env
from swift_plugins.data.conversation import ConversationOptions, to_swift_row
from swift_plugins.data.messages import messages_to_swift_row
from swift_plugins.data.records import parse_record
from swift_plugins.errors import UserError
from swift_plugins.files import atomic_write_text, line_offsets, read_line
from swift_plugins.lengths.counter import DetectionAnswerCounter, LengthCounter
from swift_plugins.lengths.dataset import KIND_CODES
from swift_plugins.packing.resume import check_resume
from swift_plugins.packing.samples import SamplePlan, build_sample_plan, epoch_order, pack_count_multiple_of, split_pieces
from swift_plugins.training.calibration import counter_from_template
from swift_plugins.training.template import EncodedPack, check_packing_template

__all__ = ["PackLengthMismatch", "PackedDataset", "build_packed_datasets", "plan_digest"]


def plan_digest(plan) -> str:
    """sha256 of the plan's JSON: two runs train the same packs exactly when their digests agree."""
    return hashlib.sha256(plan.to_json().encode()).hexdigest()


class PackLengthMismatch(RuntimeError):
    """The template encoded a sample to a different length than planned: never train on a wrong plan."""


class PackedDataset:
    """Map-style dataset over packs of a :class:`SamplePlan` (see module docstring).

    ``train=True``: per-epoch shuffled, rank-balanced order; ``train=False`` (eval): packs in plan
    order, undealt. Items are lists of encoded samples; the template's collator packs them.
    """

    def __init__(self, sample_plan: SamplePlan, template, conversation: ConversationOptions, *, world_size: int = 1,
                 seed: int = 0, train: bool = True, counter: Optional[LengthCounter] = None,
                 log_served: bool = False):
        """``sample_plan``: for ``train`` its pack count must be a multiple of ``world_size``
        (:func:`pack_count_multiple_of`); the plan is read, never changed. ``log_served``: the
        packing callback logs the packs each step trained (``packing/served_rank<R>.jsonl``)."""
        self.sp = sample_plan
        self.log_served = log_served
        self.template = template
        self.conversation = conversation
        self.world_size = max(1, int(world_size))
        self.seed = seed
        self.train = train
        self.counter = counter
        if train and sample_plan.plan.num_packs % self.world_size:
            raise ValueError(f"{sample_plan.plan.num_packs} packs do not fill whole steps of {self.world_size} "
                             "ranks; pass the plan through pack_count_multiple_of first")
        self._offsets = [line_offsets(path) for path in sample_plan.paths]
        self._base_dirs = [os.path.dirname(os.path.abspath(path)) for path in sample_plan.paths]  # images resolve here
        self._answers: Optional[DetectionAnswerCounter] = None  # built on first split piece (rare)
        self.epoch = 0
        self.order = self.epoch_order(0)

    # -- order ---------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> list[list[int]]:
        """Packs (lists of sample indices) in the order the ranks read them this epoch.

        Train plans hold a multiple of ``world_size`` packs (:func:`pack_count_multiple_of`), so
        every step has one pack per rank and the epoch length never changes."""
        if not self.train:
            return [list(p) for p in self.sp.plan.packs]
        return epoch_order(self.sp.plan.packs, self.sp.lengths, self.world_size, seed=self.seed, epoch=epoch)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.order = self.epoch_order(epoch)

    def resume_state(self) -> dict:
        """What a checkpoint must match to continue this run's plan: written next to each checkpoint."""
        return {"world_size": self.world_size, "plan_sha256": plan_digest(self.sp.plan), "seed": self.seed,
                "num_packs": self.sp.plan.num_packs}

    @property
    def packed_length(self) -> list[int]:
        """Tokens per pack in plan order (what ms-swift's dataset statistics read)."""
        return self.sp.plan.pack_lengths(self.sp.lengths)

    # -- items -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.order)

    def place(self, sample: int) -> str:
        """``path:line`` of sample index ``sample`` (for messages)."""
        return f"{self.sp.paths[int(self.sp.files[sample])]}:{int(self.sp.lines[sample])}"

    def row(self, sample: int) -> dict:
        """The ms-swift row of sample index ``sample`` (read from disk, converted like training)."""
        f, line, part = int(self.sp.files[sample]), int(self.sp.lines[sample]), int(self.sp.parts[sample])
        path = self.sp.paths[f]
        record = parse_record(read_line(path, self._offsets[f], line), path=path, line=line)
        base_dir = self._base_dirs[f]
        if int(self.sp.kinds[sample]) == KIND_CODES["messages"]:
            return messages_to_swift_row(record, base_dir=base_dir)
        opts = self.conversation.to_dict()
        if part >= 0:
            if self._answers is None:
                self._answers = DetectionAnswerCounter(self.counter.text_tokens)
            frame = self.counter.frame("<image>" + self.conversation.resolved_prompt, 1)
            record = split_pieces(record, line, self.conversation, self.counter, self._answers, frame,
                                  self.sp.plan.max_length, path)[part]
            opts["object_ordering"] = "none"  # pieces are already in conversation order
        return to_swift_row(record, base_dir=base_dir, sample_key=line, **opts)

    def __getitem__(self, index: int) -> EncodedPack:
        """The pack at ``index`` of this epoch's order, each sample encoded and its length checked."""
        encoded = []
        for sample in self.order[index]:
            try:
                enc = self.template.encode(self.row(sample), return_length=True)
            except OSError as e:  # PIL: an image whose data broke after planning (check_images decoded it then)
                raise UserError(f"{self.place(sample)}: images: cannot be loaded ({type(e).__name__}: {e}) (re-encode "
                                f"or replace the image, or drop the record)") from None
            planned = int(self.sp.lengths[sample])
            if enc["length"] != planned:
                raise PackLengthMismatch(
                    f"{self.place(sample)}: encoded length {enc['length']} != planned "
                    f"{planned} (part {int(self.sp.parts[sample])}); the length rule and the template disagree - "
                    "check template max_pixels / MAX_PIXELS and the conversation options")
            encoded.append(enc)
        return EncodedPack(encoded, position=index, samples=self.order[index],
                           tokens=sum(e["length"] for e in encoded))


# ------------------------------------------------------------------------------ ms-swift glue
def build_packed_datasets(sft, train_dataset, val_dataset):
    """``SwiftSft._post_process_datasets`` with packing: plan from the JSONL files, return datasets.

    ``train_dataset`` / ``val_dataset`` (ms-swift's loaded rows, if any) are not used: samples
    are read from the JSONL by line, so nothing is held in memory and lengths are exact.
    """
    import torch.distributed as dist
    from swift.utils import get_logger, is_master

    logger = get_logger()
    opts = sft.swiftpack_options
    args = sft.args
    template = sft.template
    _prepare_template(template, args.training_args, opts.global_max_length)
    world_size = world_size_from_env(os.environ)
    rank = dist.get_rank() if dist.is_initialized() else 0
    conversation = opts.conversation_options()
    counter = counter_from_template(template)
    cache_dir = opts.length_cache_dir
    common = dict(strategy=opts.packing_strategy, seed=opts.packing_seed,
                  buffer_size=opts.packing_buffer or None, overlong=opts.packing_overlong,
                  on_error=opts.on_error, check_images=opts.check_images, cache_dir=cache_dir,
                  record_format=opts.record_format)

    def plan(paths, train):
        kw = dict(common)
        if train:
            kw.update(min_fill_ratio=opts.packing_min_fill_ratio, drop_last=opts.packing_drop_last)
        else:
            kw.update(buffer_size=None)  # eval: plan globally, keep every pack
        distributed = dist.is_initialized() and world_size > 1
        if distributed and rank != 0:
            dist.barrier()  # rank 0 counts first and fills the cache; the others then read it
        result = build_sample_plan(paths, counter, conversation, global_max_length=opts.global_max_length, **kw)
        if distributed and rank == 0:
            dist.barrier()
        return result

    planned = plan(opts.train_jsonl, True)
    # equal step counts on every rank without dropping or repeating samples
    train_plan = dataclasses.replace(planned, plan=pack_count_multiple_of(planned.plan, planned.lengths, world_size))
    train = PackedDataset(train_plan, template, conversation, world_size=world_size, seed=opts.packing_seed,
                          counter=counter, log_served=opts.log_data_order)
    check_resume(args.resume_from_checkpoint, train.resume_state())
    val = None
    if opts.val_jsonl:
        val_plan = plan(opts.val_jsonl, False)
        if not opts.eval_packing:
            val_plan = _one_sample_per_pack(val_plan)
        val = PackedDataset(val_plan, template, conversation, world_size=world_size, seed=opts.packing_seed,
                            train=False, counter=counter)
    _report(args.output_dir, train_plan, val.sp if val else None, is_master(), logger, world_size,
            args.gradient_accumulation_steps, len(train))
    return train, val


def _prepare_template(template, training_args, global_max_length: int) -> None:
    """Refuse what would break planned packing (a non-packing template, persistent dataloader workers, a
    shuffling train dataloader: UserError with the fix), then switch the template to padding-free packing
    of ``global_max_length`` tokens."""
    check_packing_template(template)
    if training_args.dataloader_persistent_workers and training_args.dataloader_num_workers > 0:
        raise UserError("dataloader_persistent_workers: training.packing needs false (persistent workers keep the "
                        "first epoch's pack order)")
    if training_args.train_dataloader_shuffle:
        raise UserError("train_dataloader_shuffle: training.packing needs false (the packs are already in the dealt "
                        "order; a shuffle would undo the deal and train other packs than the plan logs)")
    template.padding_free = True
    template.packing = True
    template.max_length = global_max_length


def _one_sample_per_pack(val_plan: SamplePlan) -> SamplePlan:
    """Eval without packing: every planned sample alone, in sample order (overlong ones stay dropped as
    planned; a batch is still isolated). Packs [[2, 0], [1]] -> [[0], [1], [2]], strategy "none"."""
    kept = sorted(s for p in val_plan.plan.packs for s in p)
    return dataclasses.replace(
        val_plan, plan=dataclasses.replace(val_plan.plan, packs=[[s] for s in kept], strategy="none"))


def _report(output_dir, train_plan: SamplePlan, val_plan: Optional[SamplePlan], write: bool, logger, world_size,
            ga, train_len) -> None:
    summary = {"train": train_plan.summary()}
    if val_plan is not None:
        summary["val"] = val_plan.summary()
    steps = math.ceil(train_len / world_size / ga)
    summary["train"].update({"world_size": world_size, "gradient_accumulation_steps": ga,
                             "optimizer_steps_per_epoch": steps})
    t = summary["train"]
    logger.info(
        f"swiftpack packing: {', '.join(t['jsonl'])}: records read {t['records_read']} = valid "
        f"{t['records_read'] - t['records_skipped']} + skipped {t['records_skipped']}; "
        f"{t['records_split']} dense record(s) split -> {t['samples']} samples = packed {t['samples_packed']} "
        f"+ dropped {t['samples_dropped']} {t['dropped_by_reason']}; {t['num_packs']} packs of "
        f"{t['global_max_length']} tokens ({t['avg_samples_per_pack']} samples/pack, efficiency "
        f"{t['efficiency']:.2%}); {steps} optimizer steps/epoch (world {world_size} x grad accum {ga}); "
        f"dropped/skipped list: {os.path.join(output_dir, 'packing', 'dropped_samples.jsonl')}")
    if not write:
        return
    folder = os.path.join(output_dir, "packing")
    os.makedirs(folder, exist_ok=True)
    train_plan.plan.save(os.path.join(folder, "plan.json"))
    # plan.json's sample indices -> records: sample k is line lines[k] (part parts[k] of a split record)
    atomic_write_text(os.path.join(folder, "samples.json"), json.dumps(
        {"jsonl": train_plan.paths, "files": train_plan.files.tolist(), "lines": train_plan.lines.tolist(),
         "parts": train_plan.parts.tolist(), "kinds": train_plan.kinds.tolist(),
         "lengths": train_plan.lengths.tolist()}, separators=(",", ":")) + "\n")
    atomic_write_text(os.path.join(folder, "summary.json"), json.dumps(summary, indent=2) + "\n")
    rows = []
    for split, sp in (("train", train_plan), ("val", val_plan)):
        if sp is None:
            continue
        rows += [{"split": split, **r} for r in sp.dropped_rows()]
        rows += [{"split": split, "jsonl": s.path, "line": s.line, "part": -1, "length": None,
                  "reason": f"{s.kind}: {s.reason}"} for s in sp.skipped]
    atomic_write_text(os.path.join(folder, "dropped_samples.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
