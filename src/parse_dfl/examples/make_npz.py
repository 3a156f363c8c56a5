"""Write my_data.npz next to this script, in the layout `data.name: npz` reads (docs/byod.md):
replace the random arrays with your own, one `x_<modality>` per modality, labels in `y`."""

from pathlib import Path

import numpy as np

rng = np.random.default_rng(0)
n = 600
y = rng.integers(0, 3, n)  # 3 classes, labels 0..2
acc = rng.normal(size=(n, 3, 50)) + y[:, None, None]  # series: (N, channels, time steps)
tab = rng.normal(size=(n, 8)) + 0.5 * y[:, None]  # vector: (N, features)
subject = rng.integers(0, 6, n)  # optional groups (e.g. subjects), for partition.name: group
target = Path(__file__).with_name("my_data.npz")
np.savez(
    target,
    x_acc=acc.astype(np.float32),
    x_tab=tab.astype(np.float32),
    y=y,
    groups=subject,
    class_names=np.array(["sit", "walk", "run"]),
)
print(f"{target}: {n} samples, modalities acc {acc.shape[1:]} and tab {tab.shape[1:]}")
