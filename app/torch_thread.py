"""The one thread that runs the service's PyTorch work: loading the models and decoding every batch.

PyTorch runs its CPU kernels on an OpenMP thread team that belongs to the thread calling them, and
each thread that calls in gets a team of its own. With the models loaded on the main thread and
decoded on another, the two teams competed for the cores: on a 2-core machine beam search ran at
about half its speed (models/de-en, batches of 16 sentences: 64-80 sentences/s, against 121-140
with the loading and the decoding on one thread). One thread for all of it also means one decode at
a time, which is what the cores can hold: each decode already uses all of them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

TORCH_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
