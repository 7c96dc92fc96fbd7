"""GPU sizing, offline and without Ray: what a fine-tuning preset needs per GPU and for how long
(``scale_plan``, for ``jobs.plan``), the figures behind it (``plan_figures``, ``throughput``), and the
measurements that check them on one GPU (``gpu_measure``, for ``jobs.bench_gpu``)."""
