"""RandomShiftFlip's transform written the textbook way: mirror, zero-pad by s, crop at (s − dy, s − dx)."""
import os

import torch
import torch.nn.functional as F
import kdref

out = kdref.out_dir()
torch.manual_seed(0)
s = 3
x = torch.rand(5, 2, 7, 6, dtype=torch.float64)
dy = torch.tensor([0, 3, -2, 1, -3])
dx = torch.tensor([0, -1, 2, 3, -3])
flip = torch.tensor([0, 1, 0, 1, 1])
ref = []
for b in range(x.shape[0]):
    img = x[b].flip(-1) if flip[b] else x[b]
    padded = F.pad(img, (s, s, s, s))
    top, left = s - int(dy[b]), s - int(dx[b])
    ref.append(padded[:, top:top + x.shape[2], left:left + x.shape[3]])
kdref.save(os.path.join(out, "augmentation.json"), x=x, dy=dy, dx=dx, flip=flip, out=torch.stack(ref))
