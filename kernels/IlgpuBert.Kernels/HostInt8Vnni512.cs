// The int8 micro-kernel on AVX-512 VNNI (EVEX VPDPBUSD on 16 int32 lanes), which .NET 10 does not expose:
// AvxVnni is the VEX form only (Intel Alder Lake and later, not AMD Zen 4/5), and AVX10 is absent on
// these CPUs. The kernel is therefore machine code: HostInt8Vnni512.s beside this file is its source,
// and the bytes below are what GNU as makes of it (tools/x86/assemble.sh prints them, one instruction
// per line; a test checks the two agree where binutils are installed). It is copied once into a page
// mapped read-write, then made read-execute (never both) and called through an unmanaged function pointer.
//
// Only on x86-64 Linux (the listing follows the System V calling convention) and only where CPUID says
// AVX512_VNNI and the runtime says AVX-512BW (which includes the OS saving the ZMM state); elsewhere
// HostInt8Linear runs AVX-VNNI or AVX-512BW's VPMADDWD, and a page that cannot be made executable
// (a hardened kernel) falls back the same way.
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace IlgpuBert.Kernels;

internal static unsafe class HostInt8Vnni512
{
    /// <summary>
    /// tile[16·r + j] and tile[96 + 16·r + j] (r &lt; 6, j &lt; 16) = Σ over <paramref name="groups"/> 4-byte groups of the
    /// unsigned bytes of a 6-row panel (group g of row r at a + 24·g + 4·r) times the signed bytes of two 16-column panels
    /// (group g of column j at b + 64·g + 4·j): HostInt8Linear's Micro6x16 on two column panels at once.
    /// </summary>
    public static void Micro6x32(long groups, byte* a, sbyte* b0, sbyte* b1, int* tile) => Kernel(groups, a, b0, b1, tile);

    /// <summary>Whether <see cref="Micro6x32"/> can run here.</summary>
    public static bool IsSupported => Kernel != null;

    // Mapped when the class is first used. SuppressGCTransition: a short call that neither blocks nor calls back into .NET.
    private static readonly delegate* unmanaged[SuppressGCTransition]<long, byte*, sbyte*, sbyte*, int*, void> Kernel =
        (delegate* unmanaged[SuppressGCTransition]<long, byte*, sbyte*, sbyte*, int*, void>)Load();

    /// <summary>The machine code of HostInt8Vnni512.s (tools/x86/assemble.sh).</summary>
    internal static ReadOnlySpan<byte> Code =>
    [
        0x62, 0xA1, 0x7D, 0x40, 0xEF, 0xC0, // 0: vpxord zmm16,zmm16,zmm16
        0x62, 0xA1, 0x75, 0x40, 0xEF, 0xC9, // 6: vpxord zmm17,zmm17,zmm17
        0x62, 0xA1, 0x6D, 0x40, 0xEF, 0xD2, // c: vpxord zmm18,zmm18,zmm18
        0x62, 0xA1, 0x65, 0x40, 0xEF, 0xDB, // 12: vpxord zmm19,zmm19,zmm19
        0x62, 0xA1, 0x5D, 0x40, 0xEF, 0xE4, // 18: vpxord zmm20,zmm20,zmm20
        0x62, 0xA1, 0x55, 0x40, 0xEF, 0xED, // 1e: vpxord zmm21,zmm21,zmm21
        0x62, 0xA1, 0x4D, 0x40, 0xEF, 0xF6, // 24: vpxord zmm22,zmm22,zmm22
        0x62, 0xA1, 0x45, 0x40, 0xEF, 0xFF, // 2a: vpxord zmm23,zmm23,zmm23
        0x62, 0x01, 0x3D, 0x40, 0xEF, 0xC0, // 30: vpxord zmm24,zmm24,zmm24
        0x62, 0x01, 0x35, 0x40, 0xEF, 0xC9, // 36: vpxord zmm25,zmm25,zmm25
        0x62, 0x01, 0x2D, 0x40, 0xEF, 0xD2, // 3c: vpxord zmm26,zmm26,zmm26
        0x62, 0x01, 0x25, 0x40, 0xEF, 0xDB, // 42: vpxord zmm27,zmm27,zmm27
        0x48, 0x85, 0xFF, // 48: test rdi,rdi
        0x0F, 0x8E, 0x92, 0x00, 0x00, 0x00, // 4b: jle e3
        0x62, 0x61, 0x7E, 0x48, 0x6F, 0x22, // 51: vmovdqu32 zmm28,ZMMWORD PTR [rdx]
        0x62, 0x61, 0x7E, 0x48, 0x6F, 0x29, // 57: vmovdqu32 zmm29,ZMMWORD PTR [rcx]
        0x62, 0x62, 0x7D, 0x48, 0x58, 0x36, // 5d: vpbroadcastd zmm30,DWORD PTR [rsi]
        0x62, 0x82, 0x0D, 0x40, 0x50, 0xC4, // 63: vpdpbusd zmm16,zmm30,zmm28
        0x62, 0x82, 0x0D, 0x40, 0x50, 0xCD, // 69: vpdpbusd zmm17,zmm30,zmm29
        0x62, 0x62, 0x7D, 0x48, 0x58, 0x7E, 0x01, // 6f: vpbroadcastd zmm31,DWORD PTR [rsi+0x4]
        0x62, 0x82, 0x05, 0x40, 0x50, 0xD4, // 76: vpdpbusd zmm18,zmm31,zmm28
        0x62, 0x82, 0x05, 0x40, 0x50, 0xDD, // 7c: vpdpbusd zmm19,zmm31,zmm29
        0x62, 0x62, 0x7D, 0x48, 0x58, 0x76, 0x02, // 82: vpbroadcastd zmm30,DWORD PTR [rsi+0x8]
        0x62, 0x82, 0x0D, 0x40, 0x50, 0xE4, // 89: vpdpbusd zmm20,zmm30,zmm28
        0x62, 0x82, 0x0D, 0x40, 0x50, 0xED, // 8f: vpdpbusd zmm21,zmm30,zmm29
        0x62, 0x62, 0x7D, 0x48, 0x58, 0x7E, 0x03, // 95: vpbroadcastd zmm31,DWORD PTR [rsi+0xc]
        0x62, 0x82, 0x05, 0x40, 0x50, 0xF4, // 9c: vpdpbusd zmm22,zmm31,zmm28
        0x62, 0x82, 0x05, 0x40, 0x50, 0xFD, // a2: vpdpbusd zmm23,zmm31,zmm29
        0x62, 0x62, 0x7D, 0x48, 0x58, 0x76, 0x04, // a8: vpbroadcastd zmm30,DWORD PTR [rsi+0x10]
        0x62, 0x02, 0x0D, 0x40, 0x50, 0xC4, // af: vpdpbusd zmm24,zmm30,zmm28
        0x62, 0x02, 0x0D, 0x40, 0x50, 0xCD, // b5: vpdpbusd zmm25,zmm30,zmm29
        0x62, 0x62, 0x7D, 0x48, 0x58, 0x7E, 0x05, // bb: vpbroadcastd zmm31,DWORD PTR [rsi+0x14]
        0x62, 0x02, 0x05, 0x40, 0x50, 0xD4, // c2: vpdpbusd zmm26,zmm31,zmm28
        0x62, 0x02, 0x05, 0x40, 0x50, 0xDD, // c8: vpdpbusd zmm27,zmm31,zmm29
        0x48, 0x83, 0xC6, 0x18, // ce: add rsi,0x18
        0x48, 0x83, 0xC2, 0x40, // d2: add rdx,0x40
        0x48, 0x83, 0xC1, 0x40, // d6: add rcx,0x40
        0x48, 0xFF, 0xCF, // da: dec rdi
        0x0F, 0x85, 0x6E, 0xFF, 0xFF, 0xFF, // dd: jne 51
        0x62, 0xC1, 0x7E, 0x48, 0x7F, 0x00, // e3: vmovdqu32 ZMMWORD PTR [r8],zmm16
        0x62, 0xC1, 0x7E, 0x48, 0x7F, 0x48, 0x06, // e9: vmovdqu32 ZMMWORD PTR [r8+0x180],zmm17
        0x62, 0xC1, 0x7E, 0x48, 0x7F, 0x50, 0x01, // f0: vmovdqu32 ZMMWORD PTR [r8+0x40],zmm18
        0x62, 0xC1, 0x7E, 0x48, 0x7F, 0x58, 0x07, // f7: vmovdqu32 ZMMWORD PTR [r8+0x1c0],zmm19
        0x62, 0xC1, 0x7E, 0x48, 0x7F, 0x60, 0x02, // fe: vmovdqu32 ZMMWORD PTR [r8+0x80],zmm20
        0x62, 0xC1, 0x7E, 0x48, 0x7F, 0x68, 0x08, // 105: vmovdqu32 ZMMWORD PTR [r8+0x200],zmm21
        0x62, 0xC1, 0x7E, 0x48, 0x7F, 0x70, 0x03, // 10c: vmovdqu32 ZMMWORD PTR [r8+0xc0],zmm22
        0x62, 0xC1, 0x7E, 0x48, 0x7F, 0x78, 0x09, // 113: vmovdqu32 ZMMWORD PTR [r8+0x240],zmm23
        0x62, 0x41, 0x7E, 0x48, 0x7F, 0x40, 0x04, // 11a: vmovdqu32 ZMMWORD PTR [r8+0x100],zmm24
        0x62, 0x41, 0x7E, 0x48, 0x7F, 0x48, 0x0A, // 121: vmovdqu32 ZMMWORD PTR [r8+0x280],zmm25
        0x62, 0x41, 0x7E, 0x48, 0x7F, 0x50, 0x05, // 128: vmovdqu32 ZMMWORD PTR [r8+0x140],zmm26
        0x62, 0x41, 0x7E, 0x48, 0x7F, 0x58, 0x0B, // 12f: vmovdqu32 ZMMWORD PTR [r8+0x2c0],zmm27
        0xC3, // 136: ret
    ];

    /// <summary>The code's address in an executable page, or 0 where it cannot run.</summary>
    private static nint Load() =>
        Avx512BW.IsSupported && (X86Base.CpuId(7, 0).Ecx & (1 << 11)) != 0 // CPUID.(7, 0):ECX bit 11 = AVX512_VNNI
            ? HostMachineCode.Map(Code) : 0;
}
