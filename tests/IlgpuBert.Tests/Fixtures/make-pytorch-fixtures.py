# Writes the pytorch_model.bin fixtures PyTorchCheckpointTests reads, with real torch.save
# (run with Debian's python3-torch: /usr/bin/python3 make-pytorch-fixtures.py; PyTorch 1.13.1 made
# the committed files). Each .bin holds the same small state dict; expected.json its values as
# float lists (row-major), written by Python's json module from the tensors themselves.
import collections, json, torch

torch.manual_seed(7)
base = torch.randn(4, 6)
state = collections.OrderedDict()
state["bert.embeddings.word_embeddings.weight"] = torch.randn(5, 3)
state["bert.encoder.layer.0.output.dense.weight"] = base.t()              # non-contiguous: strides (1, 6)
state["bert.encoder.layer.0.output.dense.bias"] = base[1, 2:5]            # a view into a shared storage, offset 8
state["half"] = torch.randn(2, 3).half()
state["bfloat16"] = torch.randn(3).bfloat16()
state["double"] = torch.randn(2, 2, dtype=torch.float64)
state["bert.embeddings.position_ids"] = torch.arange(7).unsqueeze(0)      # int64, as HF's BertEmbeddings buffer
state["scalar"] = torch.tensor(2.5)
state["empty"] = torch.zeros(0, 4)
state["parameter"] = torch.nn.Parameter(torch.randn(2, 2))               # pickled through _rebuild_parameter
state._metadata = collections.OrderedDict({"": {"version": 1}})           # as module.state_dict() sets it

torch.save(state, "pytorch-zip.bin")
torch.save(state, "pytorch-legacy.bin", _use_new_zipfile_serialization=False)
expected = {k: {"shape": list(v.shape), "values": v.detach().double().flatten().tolist()} for k, v in state.items()}
with open("pytorch-expected.json", "w") as f:
    json.dump(expected, f, indent=0)

# A checkpoint whose pickle would run a shell command when loaded by torch.load (weights_only=False):
# the reader must refuse it at the global it names (posix.system on Linux), running nothing.
import os
class Evil:
    def __reduce__(self):
        return (os.system, ("echo this should never run",))
torch.save(collections.OrderedDict({"bert.embeddings.word_embeddings.weight": Evil()}), "pytorch-evil.bin")
