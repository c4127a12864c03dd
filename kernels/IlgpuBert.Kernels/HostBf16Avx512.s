# The bfloat16 GEMM micro-kernel on AVX512_BF16 (EVEX VDPBF16PS: 16 lanes, each += two bf16 products, FP32
# accumulation), which .NET 10 does not expose. x86-64 System V (Linux).
#   void Bf16x6x32(long pairs /*rdi*/, const uint* a /*rsi*/, const uint* b0 /*rdx*/, const uint* b1 /*rcx*/, float* tile /*r8*/)
# tile[16·r + j] (j < 16) and tile[96 + 16·r + j] = Σ_p Σ_{2 k} a·b over one 6-row panel of a (pair p of row r, two bf16
# in one dword, at a + 24·p + 4·r) and two 16-column panels b0, b1 (pair p at + 64·p, column j at + 4·j). The products
# are exact in FP32; VDPBF16PS adds them with round-to-nearest-even and treats denormal inputs and results as zero.
# Touches only registers System V lets a function clobber: zmm16–zmm31, rdi, rsi, rdx, rcx, r8.
# After any edit: tools/x86/assemble.sh kernels/IlgpuBert.Kernels/HostBf16Avx512.s, and paste its lines into
# HostBf16Avx512.cs (a test compares the two where binutils are installed).
        .intel_syntax noprefix
        .text
        .globl Bf16x6x32
Bf16x6x32:
        vpxord  zmm16, zmm16, zmm16
        vpxord  zmm17, zmm17, zmm17
        vpxord  zmm18, zmm18, zmm18
        vpxord  zmm19, zmm19, zmm19
        vpxord  zmm20, zmm20, zmm20
        vpxord  zmm21, zmm21, zmm21
        vpxord  zmm22, zmm22, zmm22
        vpxord  zmm23, zmm23, zmm23
        vpxord  zmm24, zmm24, zmm24
        vpxord  zmm25, zmm25, zmm25
        vpxord  zmm26, zmm26, zmm26
        vpxord  zmm27, zmm27, zmm27
        test    rdi, rdi
        jle     2f
1:
        vmovups zmm28, [rdx]
        vmovups zmm29, [rcx]
        vpbroadcastd zmm30, [rsi]
        vdpbf16ps zmm16, zmm30, zmm28
        vdpbf16ps zmm17, zmm30, zmm29
        vpbroadcastd zmm31, [rsi+4]
        vdpbf16ps zmm18, zmm31, zmm28
        vdpbf16ps zmm19, zmm31, zmm29
        vpbroadcastd zmm30, [rsi+8]
        vdpbf16ps zmm20, zmm30, zmm28
        vdpbf16ps zmm21, zmm30, zmm29
        vpbroadcastd zmm31, [rsi+12]
        vdpbf16ps zmm22, zmm31, zmm28
        vdpbf16ps zmm23, zmm31, zmm29
        vpbroadcastd zmm30, [rsi+16]
        vdpbf16ps zmm24, zmm30, zmm28
        vdpbf16ps zmm25, zmm30, zmm29
        vpbroadcastd zmm31, [rsi+20]
        vdpbf16ps zmm26, zmm31, zmm28
        vdpbf16ps zmm27, zmm31, zmm29
        add     rsi, 24
        add     rdx, 64
        add     rcx, 64
        dec     rdi
        jnz     1b
2:
        vmovups [r8], zmm16
        vmovups [r8+384], zmm17
        vmovups [r8+64], zmm18
        vmovups [r8+448], zmm19
        vmovups [r8+128], zmm20
        vmovups [r8+512], zmm21
        vmovups [r8+192], zmm22
        vmovups [r8+576], zmm23
        vmovups [r8+256], zmm24
        vmovups [r8+640], zmm25
        vmovups [r8+320], zmm26
        vmovups [r8+704], zmm27
        ret
