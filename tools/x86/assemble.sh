#!/bin/bash
# Assembles a kernel listing (GNU as, Intel syntax) and prints its machine code as C# byte lines, one
# instruction per line with the instruction as a comment: what HostInt8Vnni512.cs embeds. Needs binutils.
#   tools/x86/assemble.sh kernels/IlgpuBert.Kernels/HostInt8Vnni512.s
set -euo pipefail
src=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
as --64 -o "$tmp/k.o" "$src"
# objdump lines: "  offset:\tbytes \tinstruction"; labels and headers are skipped. Offsets are hex, as jumps name them.
objdump -d -M intel "$tmp/k.o" | awk -F'\t' '/^ *[0-9a-f]+:\t/ {
  n = split($2, b, " "); line = "";
  for (i = 1; i <= n; i++) if (b[i] != "") line = line sprintf("0x%s, ", toupper(b[i]));
  ins = $3; sub(/ +$/, "", ins); gsub(/ +/, " ", ins); sub(/ <.*>$/, "", ins);
  off = $1; gsub(/[ :]/, "", off);
  printf "        %s// %s: %s\n", line, off, ins }'
