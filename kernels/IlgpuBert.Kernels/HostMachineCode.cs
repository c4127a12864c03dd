// Machine code the runtime cannot emit (EVEX instructions .NET 10 has no intrinsic for), mapped once
// into its own page: written while the page is read-write, then made read-execute (never both). Only on
// x86-64 Linux, where the listings' System V calling convention holds; anywhere else, or where the page
// cannot be made executable (SELinux's execmem, a hardened kernel), there is no kernel and the caller
// falls back. Used by HostInt8Vnni512 and HostBf16Avx512.
using System.Runtime.InteropServices;

namespace IlgpuBert.Kernels;

internal static unsafe class HostMachineCode
{
    /// <summary>The code's address in an executable page (kept for the process), or 0 where it cannot run.</summary>
    public static nint Map(ReadOnlySpan<byte> code)
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return 0;
        // libc's mmap, mprotect and munmap looked up by hand: a C library that cannot be found means no kernel, not an exception.
        if (!NativeLibrary.TryLoad("libc.so.6", out var libc) && !NativeLibrary.TryLoad("libc", out libc)) return 0;
        if (!NativeLibrary.TryGetExport(libc, "mmap", out var mmapAddress) || !NativeLibrary.TryGetExport(libc, "mprotect", out var mprotectAddress)
            || !NativeLibrary.TryGetExport(libc, "munmap", out var munmapAddress))
            return 0;
        var mmap = (delegate* unmanaged<nint, nuint, int, int, int, nint, nint>)mmapAddress;
        var mprotect = (delegate* unmanaged<nint, nuint, int, int>)mprotectAddress;
        var munmap = (delegate* unmanaged<nint, nuint, int>)munmapAddress;
        const int ProtRead = 1, ProtWrite = 2, ProtExec = 4, MapPrivate = 2, MapAnonymous = 0x20;
        nuint size = (nuint)code.Length;
        nint page = mmap(0, size, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
        if (page == -1) return 0;
        code.CopyTo(new Span<byte>((void*)page, code.Length));
        if (mprotect(page, size, ProtRead | ProtExec) != 0)
        {
            munmap(page, size);
            return 0;
        }
        return page;
    }
}
