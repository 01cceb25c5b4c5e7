"""Static report of every compiled GPU kernel (issue 18, item 2), made without a GPU.

For every CUDA kernel instantiation in the built extension (the sm_90 cubins inside cifarops._C) and every
Triton kernel variant the launchers use (cifarops.triton_kernels.variants, compiled here for sm_90): the
registers, stack and shared memory (cuobjdump -res-usage), the local-memory instructions (LDL / STL in the
SASS: register spills, or an array the compiler could not keep in registers), and the SASS of the steady
state: the instructions and global-memory bytes of one iteration of the outermost loop that stores (the
grid-stride loop; the whole kernel when it has none, as Triton's), per element.

The budget that keeps a kernel memory-bound on an H200: 4.8 TB/s over 132 SMs at 1.98 GHz is about 18.4 bytes
per SM-cycle, against 128 lane-instructions issued per SM-cycle (4 schedulers x 32 lanes), so a thread may
spend about 7 instructions per byte it moves: budget per element = 128 / 18.4 x bytes per element. The
counts are static (a loop inside the iteration counts once, a branch not taken counts too): a kernel over
its budget is named with its figures, for a reader to judge (pixel-level Philox costs ~100 instructions per
4 draws).

    python scripts/kernel_report.py [--so PATH] [--arch 90] [--out DIR] [--json] [--no-triton]

Exits 1 when any kernel, for any architecture the build holds, uses local memory (the spill test); writes
DIR/kernel_report.md (and, with --json, kernel_report.json). The per-element figures count one static
iteration, which may hold several unrolled copies of the loop body; the verdict, instructions per byte, does
not depend on that.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BYTES_PER_SM_CYCLE = 4.8e12 / (132 * 1.98e9)
INSTRUCTIONS_PER_BYTE = 128 / BYTES_PER_SM_CYCLE
SCALAR_BYTES = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2,
                "fp32": 4, "fp64": 8, "fp16": 2, "bf16": 2}

INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
TARGET = re.compile(r"0x([0-9a-f]+)")


@dataclasses.dataclass
class Kernel:
    source: str  # "cuda" or "triton"
    name: str
    registers: int
    stack: int
    shared: int
    local_ops: int  # LDL / STL instructions anywhere in the kernel
    loop: bool  # whether the steady state is a loop (else the whole kernel)
    instructions: int  # of the dearest path through one iteration of the steady state
    bytes: int  # global bytes that path loads and stores (one thread)
    elements: int  # elements one iteration handles (one thread)
    cheapest: int = 0  # instructions of the cheapest path through one iteration
    cheapest_bytes: int = 0

    @property
    def per_element(self) -> float:
        return self.instructions / self.elements

    @property
    def budget(self) -> float:
        return INSTRUCTIONS_PER_BYTE * self.bytes / self.elements

    @property
    def over_budget(self) -> bool:
        return self.per_element > self.budget


def cuobjdump() -> str:
    """Triton's bundled cuobjdump, else the CUDA toolkit's."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    for candidate in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump", shutil.which("cuobjdump")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    sys.exit("kernel_report: no cuobjdump (install triton, or set CUDA_HOME)")


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def demangle(names: list[str]) -> dict[str, str]:
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = run("c++filt", *names).splitlines()
    return dict(zip(names, out))


def resources(cubin: str) -> dict[str, dict[str, int]]:
    """Function -> {REG, STACK, SHARED, LOCAL} from cuobjdump -res-usage."""
    table, current = {}, None
    for line in run(cuobjdump(), "-res-usage", cubin).splitlines():
        line = line.strip()
        if line.startswith("Function "):
            current = line[len("Function "):].rstrip(":")
        elif current and line.startswith("REG:"):
            table[current] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line) if k in ("REG", "STACK", "SHARED", "LOCAL")}
            current = None
    return table


def sass(cubin: str) -> dict[str, list[tuple[int, str, str, bool]]]:
    """Function -> [(address, opcode, operands, predicated)]."""
    functions, current = {}, None
    for line in run(cuobjdump(), "-sass", cubin).splitlines():
        if "Function :" in line:
            current = line.split("Function :", 1)[1].strip()
            functions[current] = []
            continue
        match = INSTRUCTION.search(line)
        if match and current is not None:
            functions[current].append((int(match.group(1), 16), match.group(3), match.group(4), bool(match.group(2))))
    return functions


def access_bytes(opcode: str) -> int:
    """Bytes one thread moves with a global load or store (LDG / STG and their width suffixes)."""
    parts = opcode.split(".")
    if parts[0] not in ("LDG", "STG"):
        return 0
    for suffix, size in (("128", 16), ("64", 8), ("U16", 2), ("S16", 2), ("U8", 1), ("S8", 1)):
        if suffix in parts[1:]:
            return size
    return 4


def steady_state(code):
    """(is a loop, first, last address) of the outermost loop (a backward branch) that stores to global memory,
    else of the whole kernel."""
    loops = []
    for address, opcode, operands, _ in code:
        if opcode.startswith("BRA"):
            target = TARGET.search(operands)
            if target and int(target.group(1), 16) < address:
                loops.append((int(target.group(1), 16), address))
    stores = [i[0] for i in code if i[1].startswith("STG")]
    loops = [(lo, hi) for lo, hi in loops if any(lo <= a <= hi for a in stores)]
    if not loops:
        return False, code[0][0], code[-1][0]
    lo, hi = max(loops, key=lambda span: span[1] - span[0])
    return True, lo, hi


def path_costs(code, lo: int, hi: int, loop: bool):
    """The cheapest and the dearest path through [lo, hi] as (instructions, bytes, widest store): from lo to
    the back edge at hi (a loop) or to an EXIT (the whole kernel), over the basic blocks, following forward
    branches only (an inner loop counts once). Predicated instructions count as executed."""
    body = [i for i in code if lo <= i[0] <= hi and i[1] != "NOP"]
    addresses = [i[0] for i in body]
    leaders = {lo}
    for index, (address, opcode, operands, _) in enumerate(body):
        if opcode.split(".")[0] in ("BRA", "EXIT", "RET", "BRX", "JMP", "CALL"):
            target = TARGET.search(operands)
            if opcode.startswith("BRA") and target and lo <= int(target.group(1), 16) <= hi:
                leaders.add(int(target.group(1), 16))
            if index + 1 < len(body):
                leaders.add(body[index + 1][0])
    starts = sorted(a for a in leaders if a in set(addresses) or a == lo)
    blocks = []  # (start, instructions)
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else hi + 1
        blocks.append((start, [i for i in body if start <= i[0] < end]))
    index_of = {start: n for n, (start, _) in enumerate(blocks)}
    best = {0: ((0, 0, 0), (0, 0, 0))}  # block -> (cheapest, dearest) cost on entry
    finals = []
    for n, (start, instructions) in enumerate(blocks):
        if n not in best or not instructions:
            continue
        cost = (len(instructions), sum(access_bytes(i[1]) for i in instructions),
                max([access_bytes(i[1]) for i in instructions if i[1].startswith("STG")] or [0]))
        low, high = (tuple(a + b for a, b in zip(best[n][0][:2], cost[:2])) + (max(best[n][0][2], cost[2]),),
                     tuple(a + b for a, b in zip(best[n][1][:2], cost[:2])) + (max(best[n][1][2], cost[2]),))
        last = instructions[-1]
        op, predicated = last[1].split(".")[0], last[3]
        successors = []
        if op == "BRA":
            target = TARGET.search(last[2])
            if target and int(target.group(1), 16) in index_of and int(target.group(1), 16) > last[0]:
                successors.append(index_of[int(target.group(1), 16)])
            if loop and last[0] == hi:
                finals.append((low, high))
        if op in ("EXIT", "RET") and not loop:
            finals.append((low, high))
        if (op not in ("BRA", "EXIT", "RET", "BRX", "JMP") or predicated) and n + 1 < len(blocks):
            successors.append(n + 1)
        for m in successors:
            if m in best:
                best[m] = (min(best[m][0], low), max(best[m][1], high))
            else:
                best[m] = (low, high)
    if not finals:
        return (len(body), 0, 0), (len(body), sum(access_bytes(i[1]) for i in body), 0)
    return min(f[0] for f in finals), max(f[1] for f in finals)


def scalar_bytes(demangled: str) -> int:
    """The element size of a CUDA kernel's first template argument (its scalar type)."""
    match = re.search(r"<(c10::Half|c10::BFloat16|float|double)", demangled)
    return SCALAR_BYTES[match.group(1)] if match else 4


def kernel_of(source, name, code, usage, scalar: int, per_thread: int = 0) -> Kernel:
    """The kernel's figures; elements per iteration: per_thread (Triton: BLOCK / (32 x warps)), else those of
    a 16-byte packet when the dearest path stores one (4 floats), else one. Only a display: the verdict,
    instructions per byte, does not depend on it."""
    loop, lo, hi = steady_state(code)
    cheapest, dearest = path_costs(code, lo, hi, loop)
    elements = per_thread or (16 // scalar if dearest[2] == 16 else 1)
    return Kernel(source=source, name=name, registers=usage.get("REG", 0), stack=usage.get("STACK", 0),
                  shared=usage.get("SHARED", 0), local_ops=sum(1 for i in code if i[1].split(".")[0] in ("LDL", "STL")),
                  loop=loop, instructions=dearest[0], bytes=dearest[1] or scalar, elements=elements,
                  cheapest=cheapest[0], cheapest_bytes=cheapest[1])


def cuda_kernels(so: str, arch: int) -> list[Kernel]:
    kernels = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([cuobjdump(), "-xelf", "all", os.path.abspath(so)], check=True, capture_output=True, cwd=tmp)
        for cubin in sorted(glob.glob(os.path.join(tmp, f"*.sm_{arch}.cubin"))):
            kernels += cubin_kernels(cubin)
    return kernels


def cuda_archs(so: str) -> list[int]:
    """The architectures whose cubins the build holds."""
    listing = run(cuobjdump(), "-lelf", os.path.abspath(so))
    return sorted({int(a) for a in re.findall(r"\.sm_(\d+)\.cubin", listing)})


def cubin_kernels(cubin: str) -> list[Kernel]:
    usage, code = resources(cubin), sass(cubin)
    names = demangle(list(code))
    return [kernel_of("cuda", short(names[mangled]), instructions, usage.get(mangled, {}), scalar_bytes(names[mangled]))
            for mangled, instructions in code.items()]


def short(demangled: str) -> str:
    """A CUDA kernel's name without the namespaces and parameter list: shake_drop_kernel<float, 4, long>."""
    name = re.sub(r"^void ", "", demangled)
    name = re.sub(r"cifarops::(\(anonymous namespace\)::)?", "", name)
    name = name.replace("c10::", "").replace("unsigned int", "uint32").replace("long", "int64")
    name = re.sub(r"(?<=[<, ])int(?=[,>])", "int32", name)  # stochastic pooling's signed 32-bit index
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # drop the parameter list: the first '(' outside template brackets
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            cut = i
            break
    return name[:cut]


def triton_kernels(arch: int) -> list[Kernel]:
    import triton
    from triton.backends.compiler import GPUTarget

    sys.path.insert(0, str(ROOT / "python"))
    from cifarops.triton_kernels.variants import compile_options, variants

    kernels = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (kernel, signature, constexprs) in enumerate(variants()):
            full = {**signature, **{name: "constexpr" for name in constexprs}}
            compiled = triton.compile(triton.compiler.ASTSource(fn=kernel, signature=full, constexprs=constexprs),
                                      target=GPUTarget("cuda", arch, 32), options=compile_options(kernel))
            path = os.path.join(tmp, f"{i}.cubin")
            with open(path, "wb") as f:
                f.write(compiled.asm["cubin"])
            usage, code = resources(path), sass(path)
            ((mangled, instructions),) = code.items()
            pointer = next(t for t in signature.values() if t.startswith("*"))
            size = SCALAR_BYTES.get(pointer[1:], 4)
            per_thread = constexprs.get("BLOCK", 32 * compiled.metadata.num_warps) // (32 * compiled.metadata.num_warps)
            options = ", ".join(f"{k}={v}" for k, v in constexprs.items() if k != "BLOCK")
            name = f"{kernel.__name__}[{pointer[1:]}; {options}]"
            k = kernel_of("triton", name, instructions, usage.get(mangled, {}), size, max(1, per_thread))
            k.shared = max(k.shared, compiled.metadata.shared)
            kernels.append(k)
    return kernels


def report(kernels: list[Kernel], arch: int) -> str:
    lines = [
        f"# Static report of the GPU kernels (sm_{arch}), made without a GPU",
        "",
        "`python scripts/kernel_report.py` (see its docstring). Budget: an H200 moves about "
        f"{BYTES_PER_SM_CYCLE:.1f} bytes per SM-cycle and issues 128 lane-instructions per SM-cycle, so a "
        f"kernel stays memory-bound while it spends at most {INSTRUCTIONS_PER_BYTE:.2f} SASS instructions per "
        "byte it moves. Counts are static, per thread, for one iteration of the steady-state loop (CUDA: the "
        "grid-stride loop; Triton: the whole kernel, BLOCK / (32 x warps) elements per thread), along its "
        "cheapest and its dearest path (one kernel serves every level and mode at run time: the dearest path "
        "is the most expensive of them, pixel-level draws say; an inner loop counts once). The budget is checked "
        "on the dearest path. Stack without LDL/STL is the frame of a call (64-bit division in the kernels "
        "for tensors of 2^31 elements or more), not a spill.",
        "",
    ]
    spilling = [k for k in kernels if k.local_ops]
    over = [k for k in kernels if k.over_budget]
    lines += [f"- Budget: {INSTRUCTIONS_PER_BYTE:.2f} instructions per byte; per element, that times the bytes an "
              "element moves (elements per iteration as the widest store holds, or BLOCK / (32 x warps)).",
              f"- {len(kernels)} kernels: {sum(k.source == 'cuda' for k in kernels)} CUDA instantiations, "
              f"{sum(k.source == 'triton' for k in kernels)} Triton variants.",
              f"- Local memory (spills): {', '.join(k.name for k in spilling) if spilling else 'none'}.",
              f"- Over the memory-bound budget on their dearest path: {len(over)} of {len(kernels)}, by kernel "
              "(instructions per byte, cheapest to dearest path, over its instantiations):", ""]
    families: dict = {}
    for k in kernels:
        families.setdefault((k.source, re.split(r"[<\[]", k.name)[0]), []).append(k)
    for (source, family), members in sorted(families.items()):
        dear = [m.instructions / m.bytes for m in members]
        cheap = [m.cheapest / m.cheapest_bytes for m in members if m.cheapest_bytes]
        count = sum(m.over_budget for m in members)
        cheapest = f"{min(cheap):.1f} to {max(cheap):.1f}" if cheap else "- (moves no bytes)"
        lines.append(f"  - {source} `{family}`: {count} of {len(members)} over; dearest path {min(dear):.1f} to "
                     f"{max(dear):.1f}, cheapest {cheapest} instructions per byte"
                     f"{'; ' + reason(members[0]) if count else ''}")
    lines += ["", "| source | kernel | regs | stack | shared | LDL/STL | loop | cheapest path: instr, bytes, "
              "instr / byte | dearest path: instr, bytes, instr / byte | elements / iter | dearest: instr / element "
              "(budget) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(kernels, key=lambda k: (k.source, k.name)):
        cheap = f"{k.cheapest}, {k.cheapest_bytes}, " + (f"{k.cheapest / k.cheapest_bytes:.1f}" if k.cheapest_bytes else "-")
        lines.append(f"| {k.source} | `{k.name}` | {k.registers} | {k.stack} | {k.shared} | {k.local_ops} | "
                     f"{'yes' if k.loop else 'no'} | {cheap} | {k.instructions}, {k.bytes}, "
                     f"{k.instructions / k.bytes:.1f} | {k.elements} | {k.per_element:.0f} ({k.budget:.0f})"
                     f"{' over' if k.over_budget else ''} |")
    return "\n".join(lines) + "\n"


def reason(k: Kernel) -> str:
    name = k.name
    if "fmp" in name:
        return ("fractional max-pooling computes each output's region (interval arithmetic, a Philox draw) and "
                "scans it; its bytes per element are few, so it is compute-bound by design at small windows")
    if "maxout" in name:
        return ("a group's pieces are compared (and, probabilistic, drawn with Philox) per output; one kernel serves "
                "the three modes (max, sample, expectation: a softmax with exp per piece), and the backward moves "
                "few bytes per element (a one-byte index read, the gradient written), so its index math and "
                "mode branches weigh more than the bytes")
    if "shake_drop" in name or "shake_shake" in name:
        return "per-element Philox draws (pixel level: one Philox call per 4 elements) and the coefficient math"
    if "stochastic_pool" in name:
        return ("each output scans its k_h x k_w window twice (the sum, then the running sum up to its draw, one Philox "
                "uniform per output) and each input of the backward walks the windows that contain it (the "
                "expectation's recomputing each window's two sums), against a few bytes moved per element: "
                "compute-bound by design beyond the smallest windows")
    if "drop_activation" in name:
        return ("its mask is one Philox draw per element (a Philox4x32-10 call per 4 elements in NCHW, per element in "
                "channels_last, whose NCHW index is another), against 2 or 3 bytes moved per element")
    return "see the SASS"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--so", help="the built cifarops._C with CUDA (default: build-torch-2.11.0/lib.*/cifarops/_C*.so, CI's build against the GPU machines' torch)")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--out", default=str(ROOT / "docs"), help="directory for kernel_report.md and .json")
    parser.add_argument("--no-triton", action="store_true", help="the CUDA kernels only")
    parser.add_argument("--json", action="store_true", help="also write kernel_report.json")
    args = parser.parse_args(argv)
    so = args.so or next(iter(sorted(glob.glob(str(ROOT / "build-torch-2.11.0" / "lib.*" / "cifarops" / "_C*.so")))), None)
    if so is None or not os.path.exists(so):
        sys.exit("kernel_report: no CUDA build of cifarops._C; run `bash scripts/check_torch_versions.sh 2.11.0` first, or pass --so")
    kernels = cuda_kernels(so, args.arch)
    if not kernels:
        sys.exit(f"kernel_report: no sm_{args.arch} kernels in {so}")
    if not args.no_triton:
        kernels += triton_kernels(args.arch)
    # The spill check covers every architecture built (register allocation differs between them); the
    # Triton variants' other architectures: tests/test_build.py.
    others = [a for a in cuda_archs(so) if a != args.arch]
    other_spills = [f"{k.name} (sm_{a})" for a in others for k in cuda_kernels(so, a) if k.local_ops]
    os.makedirs(args.out, exist_ok=True)
    text = report(kernels, args.arch)
    Path(args.out, "kernel_report.md").write_text(text)
    if args.json:
        Path(args.out, "kernel_report.json").write_text(json.dumps(
            [dict(dataclasses.asdict(k), per_element=k.per_element, budget=k.budget) for k in kernels], indent=1))
    print(text.split("\n| source")[0])
    spilling = [k.name for k in kernels if k.local_ops] + other_spills
    print(f"kernel_report: local memory checked in every kernel for sm_{', sm_'.join(map(str, [args.arch, *others]))}")
    if spilling:
        print(f"kernel_report: FAILED: {len(spilling)} kernels use local memory: {spilling}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
