// Multi-head self-attention on device tensors: the fused kernels with their outputs and saved
// state rented from the device's pool. The autograd tape (model issue) builds on these calls.
using ILGPU;
using IlgpuBert.Kernels;
using IlgpuBert.Runtime;

namespace IlgpuBert.Ops;

public static class SelfAttention
{
    /// <summary>
    /// context [B, S, NH·HD] and lse [B, NH, S] (kept for backward) from qkv [B, S, 3, NH, HD] and an
    /// optional attention_mask [B, S] (1 attend, 0 masked).
    /// </summary>
    public static (Tensor Context, Tensor Lse) Forward(BertDevice device, Tensor qkv, ArrayView<int> mask, AttentionShape shape)
    {
        var context = new Tensor(device, shape.Batch, shape.SeqLen, shape.Hidden);
        var lse = new Tensor(device, shape.Batch, shape.Heads, shape.SeqLen);
        device.Kernels.Attention.Forward(qkv.View, mask, context.View, lse.View, shape);
        return (context, lse);
    }

    /// <summary>dQkv [B, S, 3, NH, HD] from dContext, given what Forward returned.</summary>
    public static Tensor Backward(BertDevice device, Tensor qkv, ArrayView<int> mask, Tensor context, Tensor lse, Tensor dContext, AttentionShape shape)
    {
        var dQkv = new Tensor(device, shape.Batch, shape.SeqLen, 3, shape.Heads, shape.HeadDim);
        device.Kernels.Attention.Backward(qkv.View, mask, context.View, lse.View, dContext.View, dQkv.View, shape);
        return dQkv;
    }
}
