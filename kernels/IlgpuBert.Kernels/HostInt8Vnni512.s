# The int8 micro-kernel of HostInt8Linear on AVX-512 VNNI, for x86-64 System V (Linux).
#   void Vnni6x32(long groups /*rdi*/, const byte* a /*rsi*/, const sbyte* b0 /*rdx*/, const sbyte* b1 /*rcx*/, int* tile /*r8*/)
# tile[16·r + j] (j < 16) and tile[96 + 16·r + j] = Σ_g Σ_{4 k} a·b over one 6-row panel of a (group g of row r at
# a + 24·g + 4·r, unsigned) and two 16-column panels b0, b1 (group g at + 64·g, column j at + 4·j, signed).
# Touches only registers System V lets a function clobber: zmm16–zmm31, rdi, rsi, rdx, rcx, r8 (on Windows x64 rdi and
# rsi are callee-saved and the arguments arrive elsewhere, so it runs on Linux only).
# After any edit: tools/x86/assemble.sh kernels/IlgpuBert.Kernels/HostInt8Vnni512.s, and paste its lines into
# HostInt8Vnni512.cs (a test compares the two where binutils are installed).
        .intel_syntax noprefix
        .text
        .globl Vnni6x32
Vnni6x32:
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
        vmovdqu32 zmm28, [rdx]
        vmovdqu32 zmm29, [rcx]
        vpbroadcastd zmm30, [rsi]
        vpdpbusd zmm16, zmm30, zmm28
        vpdpbusd zmm17, zmm30, zmm29
        vpbroadcastd zmm31, [rsi+4]
        vpdpbusd zmm18, zmm31, zmm28
        vpdpbusd zmm19, zmm31, zmm29
        vpbroadcastd zmm30, [rsi+8]
        vpdpbusd zmm20, zmm30, zmm28
        vpdpbusd zmm21, zmm30, zmm29
        vpbroadcastd zmm31, [rsi+12]
        vpdpbusd zmm22, zmm31, zmm28
        vpdpbusd zmm23, zmm31, zmm29
        vpbroadcastd zmm30, [rsi+16]
        vpdpbusd zmm24, zmm30, zmm28
        vpdpbusd zmm25, zmm30, zmm29
        vpbroadcastd zmm31, [rsi+20]
        vpdpbusd zmm26, zmm31, zmm28
        vpdpbusd zmm27, zmm31, zmm29
        add     rsi, 24
        add     rdx, 64
        add     rcx, 64
        dec     rdi
        jnz     1b
2:
        vmovdqu32 [r8], zmm16
        vmovdqu32 [r8+384], zmm17
        vmovdqu32 [r8+64], zmm18
        vmovdqu32 [r8+448], zmm19
        vmovdqu32 [r8+128], zmm20
        vmovdqu32 [r8+512], zmm21
        vmovdqu32 [r8+192], zmm22
        vmovdqu32 [r8+576], zmm23
        vmovdqu32 [r8+256], zmm24
        vmovdqu32 [r8+640], zmm25
        vmovdqu32 [r8+320], zmm26
        vmovdqu32 [r8+704], zmm27
        ret
