"""PyTorch peer for `ilgpu-bert bench bert-step`: one BertForPreTraining training step (forward,
backward, clipping to global norm 1 and AdamW, as ours) of a BERT written in plain torch (HF transformers is not
installable here), same shapes: random tokens, 15% MLM positions with logits only there, NSP,
dropout 0.1, FP32, 2 threads. Prints the median ms and tokens/s over the timed steps.

    apt-get install python3-torch
    /usr/bin/python3 perf/peers/torch_bert_step.py --size tiny --b 16 --s 128
    python3 perf/peers/torch_bert_step.py --size base --b 32 --s 128 --vocab 30522 --device cuda [--tf32]   (tools/gpu/check.sh)
"""
import argparse, time, statistics
import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "medium": (8, 512, 8), "base": (12, 768, 12)}


class Layer(nn.Module):
    def __init__(self, h, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.ln1, self.ln2 = nn.LayerNorm(h, eps=1e-12), nn.LayerNorm(h, eps=1e-12)
        self.up, self.down = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def forward(self, x, mask):
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (h // self.heads) ** 0.5 + mask
        ctx = (F.dropout(scores.softmax(-1), 0.1, self.training) @ v).transpose(1, 2).reshape(b, s, h)
        x = self.ln1(x + F.dropout(self.out(ctx), 0.1, self.training))
        return self.ln2(x + F.dropout(self.down(F.gelu(self.up(x))), 0.1, self.training))


class Bert(nn.Module):
    def __init__(self, vocab, layers, h, heads):
        super().__init__()
        self.word, self.pos, self.token_type = nn.Embedding(vocab, h), nn.Embedding(512, h), nn.Embedding(2, h)
        self.ln = nn.LayerNorm(h, eps=1e-12)
        self.layers = nn.ModuleList(Layer(h, heads) for _ in range(layers))
        self.pool, self.nsp = nn.Linear(h, h), nn.Linear(h, 2)
        self.transform, self.tln = nn.Linear(h, h), nn.LayerNorm(h, eps=1e-12)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, ids, types, mask, positions, labels, nsp_labels):
        s = ids.shape[1]
        x = F.dropout(self.ln(self.word(ids) + self.pos(torch.arange(s, device=ids.device)) + self.token_type(types)), 0.1, self.training)
        additive = (1.0 - mask[:, None, None, :].float()) * -1e4
        for layer in self.layers:
            x = layer(x, additive)
        nsp = self.nsp(torch.tanh(self.pool(x[:, 0])))
        picked = x.reshape(-1, x.shape[-1])[positions]
        logits = self.tln(F.gelu(self.transform(picked))) @ self.word.weight.t() + self.bias
        return F.cross_entropy(logits, labels) + F.cross_entropy(nsp, nsp_labels)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="tiny")
    p.add_argument("--b", type=int, default=16)
    p.add_argument("--s", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tf32", action="store_true", help="cuda: allow TF32 tensor cores in matmuls (off: FP32)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    layers, h, heads = SIZES[a.size]
    model = Bert(a.vocab, layers, h, heads).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    ids = torch.randint(5, a.vocab, (a.b, a.s), device=dev)
    types = torch.zeros_like(ids)
    mask = torch.ones_like(ids)
    positions = torch.randperm(a.b * a.s, device=dev)[: int(0.15 * a.b * a.s)]
    labels = torch.randint(5, a.vocab, (len(positions),), device=dev)
    nsp_labels = torch.randint(0, 2, (a.b,), device=dev)
    times = []
    for step in range(a.steps + 2):
        sync()
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model(ids, types, mask, positions, labels, nsp_labels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        sync()
        if step >= 2:
            times.append((time.perf_counter() - start) * 1000)
    ms = statistics.median(times)
    where = f"threads={a.threads}" if dev.type == "cpu" else f"{torch.cuda.get_device_name()} {'tf32' if a.tf32 else 'fp32'}"
    print(f"torch {torch.__version__} bert-step+adamw size={a.size} b={a.b} s={a.s} vocab={a.vocab} {where}: {ms:.1f} ms, {a.b * a.s / ms * 1000:.0f} tokens/s")


if __name__ == "__main__":
    main()
