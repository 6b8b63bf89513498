"""What each benchmark's table shows (benchmarks/tables.py draws them into docs/benchmarks.md).

One Spec per bench name: the metric compared, our impl and the peers (one line per case, ours against
each peer), or a baseline (one line per impl, each against it), which records a row takes, and a sentence
on how to read it. A bench without a Spec still gets a table (tables.default_metrics); add one here to say
what matters. Impl names and record fields are the benchmarks' own (benchmarks/common.py: record).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A record field shown in a column."""
    field: str
    label: str
    scale: float = 1.0   # shown value = record value / scale (bytes -> MiB)
    higher: bool = False  # higher is better (rates, shares); else lower (times, bytes, launches)


@dataclass(frozen=True)
class Peer:
    """A column of baselines: per run, the best of these impls."""
    label: str
    impls: tuple[str, ...]


@dataclass(frozen=True)
class Spec:
    """One bench's table (see benchmarks/tables.py for how rows, runs and ratios are made)."""
    title: str
    command: str = ""
    metric: Metric | None = None          # None: found from the records (see default_metrics)
    extra: tuple[Metric, ...] = ()         # more columns, values only
    ours: tuple[str, ...] = ()             # with peers: one line per case, ours against each peer
    ours_label: str = "wslfast"
    peers: tuple[Peer, ...] = ()
    baseline: str = ""                     # without peers: one line per impl, each against this impl
    modes: tuple[str, ...] = ()            # only these modes (all when empty)
    impl_keys: tuple[str, ...] = ()        # case keys that belong to an impl, not to the row
    where: tuple[tuple[str, object], ...] = ()  # only cases with these values
    select: str = "session"                # "session" | "newest"
    rows: str = "all"                      # "all" | "last": only the cases the newest session measured
    combine: str = "median"                # "median" | "best"
    note: str = ""                         # one sentence on how to read it


MS = Metric("ms_p50", "ms")
MEM = Metric("peak_mem_bytes", "peak MiB", scale=2**20)
STOCK_CE = Peer("stock PyTorch", ("eager_cross_entropy", "eager_logsoftmax"))

SPECS: dict[str, Spec] = {
    "soft_ce": Spec(
        "Soft-target cross-entropy, forward + backward", "python benchmarks/bench_soft_ce.py", MS,
        ours=("wslfast",), peers=(STOCK_CE, Peer("torch.compile", ("compile_logsoftmax",)),
                                  Peer("Liger", ("liger",))), modes=("fwdbwd",), rows="last",
        note="Stock PyTorch: per run the faster of F.cross_entropy with probability targets and "
             "-(t * log_softmax(z)).sum(-1), dense target built before timing."),
    "soft_ce_linear": Spec(
        "Fused classifier + soft-target cross-entropy, forward + backward", "python benchmarks/bench_soft_ce.py",
        MS, extra=(MEM,), ours=("wslfast",),
        peers=(Peer("stock PyTorch", ("eager_logsoftmax",)), Peer("cut-cross-entropy", ("cut_cross_entropy",))),
        modes=("fwdbwd",), rows="last",
        note="Stock PyTorch: features @ W.T + b, then -(t * log_softmax(z)).sum(-1); peak MiB: the extra memory "
             "of one fwd+bwd."),
    "conv_bn": Spec(
        "Grouped conv + BatchNorm + ReLU block, forward + backward", "python benchmarks/bench_conv_bn.py", MS,
        ours=("wslfast",), peers=(Peer("eager", ("eager",)), Peer("torch.compile", ("compile",))),
        modes=("fwdbwd",), rows="last", note="Eager: F.conv2d -> F.batch_norm -> F.relu."),
    "conv_bn_step": Spec(
        "Whole-model SGD step, fused vs stock layers", "python benchmarks/bench_conv_bn.py", MS,
        ours=("wslfast",), peers=(Peer("eager", ("eager",)),), impl_keys=("fused",), rows="last"),
    "train_step": Spec(
        "Training step (model + loss + SGD), wslfast vs stock", "python benchmarks/bench_train_step.py",
        Metric("img_per_s", "img/s", higher=True), extra=(MEM,), ours=("wslfast",),
        peers=(Peer("stock", ("stock",)),), combine="best", rows="last",
        note="The best round of each side, as bench_train_step.py reports it; stock: torchvision's model "
             "(or create_model(fused=False)) and the dense soft-target CE."),
    "pipeline": Spec(
        "Input pipeline: DALI loader vs torchvision DataLoader", "python benchmarks/bench_pipeline.py",
        Metric("images_per_s", "img/s", higher=True), extra=(MEM,),
        ours=("wslfast-dali-cpu", "wslfast-dali-mixed"), peers=(Peer("DataLoader (PIL)", ("torchvision-pil",)),),
        rows="last"),
    "data_shards": Spec(
        "Shard build: records/s and peak memory (PSS of the process tree)", "python benchmarks/bench_data.py",
        Metric("records_per_s", "records/s", higher=True), extra=(MEM,), baseline="before",
        impl_keys=("workers",), select="newest",
        note="wslfast-local: --workers 1 (in-process); wslfast-ray: --engine ray; before: the pipeline this "
             "replaced. Each line is its impl's newest record."),
    "data_dedup": Spec(
        "Near-duplicate lookup, radius 10, one thread", "python benchmarks/bench_data.py",
        Metric("queries_per_s", "queries/s", higher=True), ours=("wslfast-hashindex",),
        peers=(Peer("all pairs", ("brute",)), Peer("faiss flat", ("faiss-flat",)),
               Peer("faiss multi-hash", ("faiss-multihash",))), rows="last",
        note="All pairs and faiss are timed on a sample of the queries (the record's sampled_queries)."),
    "data_check_write": Spec(
        "Check + pHash + write of real-size photos, one core", "python benchmarks/bench_data.py",
        Metric("records_per_s", "records/s", higher=True), baseline="before"),
    # Work models (no timing): counts from the kernels' launch plans, "before" and "after" a change.
    "model_soft_ce": Spec(
        "Soft-CE CUDA work model: launches per forward + backward", "python benchmarks/model_soft_ce.py",
        Metric("launches_fwdbwd", "launches"), ours=("after",), ours_label="after",
        peers=(Peer("before", ("before",)),), select="newest",
        extra=(Metric("vector_fraction", "vector share", higher=True), Metric("bytes_fwd", "bytes fwd"),
               Metric("bytes_bwd", "bytes bwd"), Metric("est_floor_us", "floor us"))),
    "model_soft_ce_linear": Spec(
        "Fused linear soft-CE CUDA work model: launches per forward + backward", "python benchmarks/model_soft_ce.py",
        Metric("launches_fwdbwd", "launches"), ours=("after",), ours_label="after",
        peers=(Peer("before", ("before",)),), select="newest"),
    "model_conv_bn": Spec(
        "Conv+BN CUDA work model per layer: ResNeXt-101 32x4d, batch 256, bf16", "python benchmarks/model_conv_bn.py",
        Metric("fwd_bytes", "fwd MiB", scale=2**20), ours=("after",), ours_label="after",
        peers=(Peer("before", ("before",)),), select="newest",
        where=(("model", "resnext101_32x4d"), ("dtype", "bfloat16")),
        extra=(Metric("fwd_useful_mma", "fwd useful", higher=True),
               Metric("dgrad_useful_mma", "dgrad useful", higher=True),
               Metric("wgrad_useful_mma", "wgrad useful", higher=True),
               Metric("finalize_depth", "finalize depth"),
               Metric("wgrad_workspace_bytes", "wgrad workspace MiB", scale=2**20),
               Metric("launches", "launches")),
        note="Useful: the share of the tensor-core work that is useful. Every model and dtype is in the records."),
    "profile_step": Spec(
        "Where a training step's time goes", "python benchmarks/profile_step.py", MS,
        extra=(Metric("share", "share", higher=True),), impl_keys=("fused",)),
    "data_web": Spec(
        "Web-dataset ingestion (img2dataset tars): records/s and peak memory", "python benchmarks/bench_data.py",
        Metric("records_per_s", "records/s", higher=True), extra=(MEM,), impl_keys=("workers",), select="newest",
        note="wslfast-vocab: the streaming caption count; wslfast-local / wslfast-workers: shards --webdataset "
             "with caption labels, in-process and on the multi-worker engine."),
    "transfer_finetune": Spec(
        "Fine-tuning throughput: wslfast vs a plain PyTorch loop", "python benchmarks/bench_transfer.py",
        Metric("images_per_s", "img/s", higher=True), extra=(MEM, Metric("load_avg", "load")), ours=("wslfast",),
        peers=(Peer("torchvision loop", ("torchvision",)),), rows="last",
        note="Same images, model, augmentation and batch; torchvision: ImageFolder + DataLoader workers and the "
             "model with stock layers."),
    "transfer_finetune_memory": Spec(
        "Fine-tuning peak memory against the training split's size", "python benchmarks/bench_transfer.py",
        MEM, extra=(Metric("seconds", "s"),), select="newest",
        note="train/transfer.py --mode finetune --steps 30: the peak summed PSS must not grow with the split."),
    "labels": Spec(
        "Labelling speed (SenseTagger)", "python benchmarks/bench_labels.py",
        Metric("texts_per_s_cpu", "texts/s (CPU time)", higher=True),
        extra=(Metric("texts_per_s_wall", "texts/s (wall)", higher=True),)),
}
