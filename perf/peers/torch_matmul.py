"""PyTorch peer for `ilgpu-bert bench gemm`: GFLOP/s of one FP32 matmul op(A)·op(B) on 2 threads,
median of repeated calls after warm-up (about half a second of them).

    OPENBLAS_CORETYPE=SapphireRapids /usr/bin/python3 perf/peers/torch_matmul.py 2048 768 768 NT

OpenBLAS picks its kernel from the CPU it detects; on a VM that reports a generic CPU name it can fall
back to a slow one, so set OPENBLAS_CORETYPE to the machine's family and say which in the results.
"""
import sys, time
import torch

torch.set_num_threads(2)
m, n, k, t = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].upper()
a = torch.randn(k, m) if t[0] == "T" else torch.randn(m, k)
b = torch.randn(n, k) if t[1] == "T" else torch.randn(k, n)


def product():
    return (a.t() if t[0] == "T" else a) @ (b.t() if t[1] == "T" else b)


for _ in range(3):
    product()
times = []
for _ in range(max(5, int(0.5 / max(1e-4, 2 * m * n * k / 150e9)))):
    start = time.perf_counter()
    product()
    times.append(time.perf_counter() - start)
times.sort()
print(round(2 * m * n * k / times[len(times) // 2] / 1e9, 1))
