r"""Per-device cost of an optimized HLO module, with loop bodies counted as often as they run.

XLA's ``compiled.cost_analysis()`` counts a ``while`` body once, so a scanned stack of 46 blocks, or a loop over
accumulated micro-batches, reports a fraction of the real work. This module parses the optimized HLO text
(``compiled.as_text()``, one device's program after SPMD partitioning), multiplies every computation by how often
it runs (``while`` bodies by their ``known_trip_count``, nested loops by the product) and sums:

- matmul FLOPs: ``dot`` (2 x output elements x contracted size) and ``convolution``, also inside fusions; Pallas
  (Mosaic) custom calls contribute the ``cost_estimate`` they carry, cuDNN attention its 2 (forward) or 5
  (backward) matmuls;
- HBM bytes: operands read plus results written by every top-level instruction (a fusion's operands and results
  are what it moves through HBM); a dynamic slice or an in-place dynamic update of a stacked buffer (the scan's
  per-layer weights and saved activations) moves only the slice;
- collective bytes per kind, both the tensor size and the ring-algorithm wire bytes each device sends, for a group
  of ``n`` devices: all-gather and reduce-scatter ``(n-1)/n`` of the full tensor, all-reduce ``2 (n-1)/n``,
  all-to-all ``(n-1)/n``, collective-permute the whole tensor.

Pure text processing (no jax): it runs on a saved HLO file as well as on a fresh compile.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_SHAPE = re.compile(r"\b(pred|token|[a-z]+[0-9]+[a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->\s*(.*)\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")
# Instructions that move no HBM bytes of their own (views, tuples, control flow whose bodies are counted).
_FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "call", "conditional",
         "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency", "iota"}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of an HLO element type (``bf16`` -> 2, ``pred`` -> 1, ``s4`` -> 0.5)."""
    if dtype == "pred":
        return 1.0
    if dtype == "token":
        return 0.0
    bits = re.search(r"\d+", dtype)
    return int(bits.group()) / 8 if bits else 0.0


def shapes_of(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
    """``[(dtype, dims)]`` of every array in an HLO type (a tuple type lists several)."""
    return [(d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in _SHAPE.findall(type_text)]


def type_bytes(type_text: str) -> float:
    return sum(math.prod(dims) * dtype_bytes(d) for d, dims in shapes_of(type_text))


def _matching(text: str, start: int, open_ch: str, close_ch: str) -> int:
    """Index just past the bracket that closes ``text[start]``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _split_top(text: str) -> list[str]:
    """Splits on commas outside brackets."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if current:
        parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


@dataclasses.dataclass
class Instruction:
    name: str
    type_text: str           # result type, e.g. "f32[2,64]{1,0}" or a tuple
    opcode: str
    operands: list[str]      # operand names
    attrs: str               # everything after the operand list


@dataclasses.dataclass
class Computation:
    name: str
    shapes: dict[str, str]   # value name -> type text (parameters and instruction results)
    instructions: list[Instruction]
    root: str = ""


def parse_instruction(line: str) -> tuple[Instruction, bool] | None:
    match = _INSTRUCTION.match(line)
    if not match:
        return None
    rest = line[match.end():]
    if rest.startswith("("):
        end = _matching(rest, 0, "(", ")")
    else:
        end = rest.find(" ")
    type_text, rest = rest[:end], rest[end:].lstrip()
    op = re.match(r"([\w\-]+)\(", rest)
    if not op:
        return None
    close = _matching(rest, op.end() - 1, "(", ")")
    operands = [o.split()[-1].lstrip("%") for o in _split_top(rest[op.end():close - 1])]
    return Instruction(match.group(2), type_text, op.group(1), operands, rest[close:]), bool(match.group(1))


def parse_module(hlo_text: str) -> tuple[dict[str, Computation], str]:
    """``({name: Computation}, entry name)`` of an HLO module's text."""
    computations, entry, current = {}, "", None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            shapes = {}
            for param in _split_top(header.group(3)):
                name, _, type_text = param.partition(":")
                shapes[name.strip().lstrip("%")] = type_text.strip()
            current = Computation(header.group(2), shapes, [])
            computations[current.name] = current
            if header.group(1):
                entry = current.name
            continue
        if current is None or line.strip() == "}":
            continue
        parsed = parse_instruction(line)
        if parsed:
            instruction, is_root = parsed
            current.instructions.append(instruction)
            current.shapes[instruction.name] = instruction.type_text
            if is_root:
                current.root = instruction.name
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text (pass compiled.as_text() of an optimized module)")
    return computations, entry


def trip_count(instruction: Instruction, computations: dict[str, Computation]) -> int:
    """Iterations of a ``while``: XLA's ``known_trip_count``, else the constant bound of its ``< N`` condition."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', instruction.attrs)
    if known:
        return int(known.group(1))
    condition = computations.get(_attr(instruction.attrs, "condition") or "")
    bounds = [int(i.operands[0]) for i in (condition.instructions if condition else [])
              if i.opcode == "constant" and i.operands and i.operands[0].isdigit()]
    if len(bounds) == 1:
        return bounds[0]
    raise ValueError(f"while loop {instruction.name}: no known_trip_count and no constant bound in its condition")


def _attr(attrs: str, key: str) -> str | None:
    match = re.search(rf"\b{key}=%?([\w.\-]+)", attrs)
    return match.group(1) if match else None


def _called(instruction: Instruction) -> list[str]:
    """Computations an instruction runs once per execution (fusion bodies, call targets, branches)."""
    out = []
    for key in ("calls", "to_apply_call"):
        name = _attr(instruction.attrs, key)
        if name:
            out.append(name)
    branches = re.search(r"branch_computations=\{([^}]*)\}", instruction.attrs)
    if branches:
        out += [b.strip().lstrip("%") for b in branches.group(1).split(",")]
    for key in ("true_computation", "false_computation"):
        name = _attr(instruction.attrs, key)
        if name:
            out.append(name)
    return out


def multiplicities(computations: dict[str, Computation], entry: str) -> tuple[dict[str, float], set[str]]:
    """How often each computation runs per execution of ``entry``, and the set of fusion bodies."""
    counts: dict[str, float] = {}
    fused: set[str] = set()

    def visit(name: str, times: float):
        counts[name] = counts.get(name, 0.0) + times
        for inst in computations[name].instructions:
            if inst.opcode == "while":
                n = trip_count(inst, computations)
                visit(_attr(inst.attrs, "body"), times * n)
                visit(_attr(inst.attrs, "condition"), times * (n + 1))
                continue
            for callee in _called(inst):
                if callee in computations:
                    if inst.opcode == "fusion" or inst.opcode.endswith("-start"):
                        fused.add(callee)
                    visit(callee, times)

    visit(entry, 1.0)
    return counts, fused


def replica_groups(attrs: str, num_devices: int) -> list[list[int]]:
    """The device groups of a collective (positions in the program's device assignment), from any of XLA's
    ``replica_groups`` spellings: ``mesh[...] {axes}``, iota ``[G,N]<=[dims]T(perm)``, explicit ``{{0,1},...}``."""
    import numpy as np
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if mesh:
        sizes = [(name, int(n)) for name, n in re.findall(r"'([^']+)'=(\d+)", mesh.group(1))]
        axes = re.findall(r"'([^']+)'", mesh.group(2))
        names = [n for n, _ in sizes]
        ids = np.arange(math.prod(n for _, n in sizes)).reshape([n for _, n in sizes])
        kept = [names.index(a) for a in axes]
        rest = [i for i in range(len(names)) if i not in kept]
        group = math.prod(sizes[i][1] for i in kept)
        return ids.transpose(rest + kept).reshape(-1, group).tolist()
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", attrs)
    if iota:
        dims = [int(x) for x in iota.group(3).split(",")]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if iota.group(4):
            ids = ids.transpose([int(x) for x in iota.group(4).split(",")])
        return ids.reshape(int(iota.group(1)), int(iota.group(2))).tolist()
    explicit = re.search(r"replica_groups=\{(\{[0-9,{} ]*\})\}", attrs)
    if explicit and explicit.group(1) != "{}":
        return [[int(x) for x in g.split(",") if x.strip()] for g in re.findall(r"\{([0-9, ]*)\}", explicit.group(1))]
    pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", attrs)
    if pairs:
        return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)", pairs.group(0))]
    return [list(range(num_devices))]


@dataclasses.dataclass
class HloCost:
    """Per-device totals of one execution of the module."""

    flops: float = 0.0                   # matmul FLOPs (dot, convolution, kernels)
    hbm_bytes: float = 0.0               # bytes read + written by top-level instructions
    collective_bytes: dict[str, float] = dataclasses.field(default_factory=dict)   # full tensor bytes per kind
    wire_bytes: dict[str, float] = dataclasses.field(default_factory=dict)         # bytes each device sends
    dcn_wire_bytes: float = 0.0          # wire bytes of collectives whose groups span slices (over DCN)
    collective_count: dict[str, float] = dataclasses.field(default_factory=dict)
    loops: list[tuple[str, int]] = dataclasses.field(default_factory=list)         # (while name, trip count)
    unknown_custom_calls: list[str] = dataclasses.field(default_factory=list)      # targets without a cost

    @property
    def total_wire_bytes(self) -> float:
        return sum(self.wire_bytes.values())


def _dot_flops(inst: Instruction, shapes: dict[str, str]) -> float:
    out = shapes_of(inst.type_text)
    lhs = shapes_of(shapes.get(inst.operands[0], ""))
    if not out or not lhs:
        return 0.0
    dims = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", inst.attrs)
    contracted = math.prod(lhs[0][1][int(i)] for i in dims.group(1).split(",") if i) if dims else 1
    return 2.0 * math.prod(out[0][1]) * contracted


def _window_taps(*, size: int, stride: int, pad_lo: int, lhs_dilate: int, rhs_dilate: int, in_size: int,
                 out_size: int) -> float:
    """Mean number of window positions that land on a real (not padded, not dilation-hole) input element."""
    import numpy as np
    pos = (np.arange(out_size)[:, None] * stride + np.arange(size)[None, :] * rhs_dilate - pad_lo)
    real = (pos >= 0) & (pos <= (in_size - 1) * lhs_dilate) & (pos % lhs_dilate == 0)
    return float(real.sum()) / max(out_size, 1)


def _conv_flops(inst: Instruction, shapes: dict[str, str]) -> float:
    """2 x output elements x input features x real window taps. TPU programs write matmuls as convolutions whose
    windows span padded or dilated dimensions (a batch or heads axis as a window): only the taps that meet a real
    input element are multiply-adds, so they are counted per window dimension (``_window_taps``)."""
    out, lhs = shapes_of(inst.type_text), shapes_of(shapes.get(inst.operands[0], ""))
    rhs = shapes_of(shapes.get(inst.operands[1], ""))
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", inst.attrs)
    if not out or not lhs or not rhs or not labels or "i" not in labels.group(2):
        return 0.0
    lhs_labels, rhs_labels, out_labels = labels.groups()
    in_features = rhs[0][1][rhs_labels.index("i")]
    window = re.search(r"window=\{([^}]*)\}", inst.attrs)
    taps = 1.0
    if window:
        def field(name, default):
            match = re.search(rf"\b{name}=([0-9_x]+)", window.group(1))
            return match.group(1).split("x") if match else default
        sizes = [int(x) for x in field("size", [])]
        n = len(sizes)
        strides = [int(x) for x in field("stride", ["1"] * n)]
        pads = [int(x.split("_")[0]) for x in field("pad", ["0_0"] * n)]
        lhs_d = [int(x) for x in field("lhs_dilate", ["1"] * n)]
        rhs_d = [int(x) for x in field("rhs_dilate", ["1"] * n)]
        for k in range(n):
            taps *= _window_taps(size=sizes[k], stride=strides[k], pad_lo=pads[k], lhs_dilate=lhs_d[k],
                                 rhs_dilate=rhs_d[k], in_size=lhs[0][1][lhs_labels.index(str(k))],
                                 out_size=out[0][1][out_labels.index(str(k))])
    return 2.0 * math.prod(out[0][1]) * in_features * taps


# Pallas splash / flash attention kernels by instruction name: matmuls of [Sq, D] x [D, Skv] size per head.
# Forward: scores and values (2); dq: scores, dP, dQ (3); dkv: scores, dP, dV, dK (4).
_ATTENTION_KERNELS = (("_dkv", 4), ("_dq", 3), ("_fwd", 2))


def _custom_call_flops(inst: Instruction, shapes: dict[str, str]) -> float | None:
    target = re.search(r'custom_call_target="([^"]+)"', inst.attrs)
    target = target.group(1) if target else ""
    estimate = re.search(r'"flops"\s*:\s*"?(\d+)', inst.attrs)
    if estimate:                                   # Pallas/Mosaic kernels carry their own cost_estimate
        return float(estimate.group(1))
    if target == "tpu_custom_call" and ("splash" in inst.name or "flash" in inst.name):
        tensors = [shapes_of(shapes.get(o, "")) for o in inst.operands]
        qkv = [t[0][1] for t in tensors if t and len(t[0][1]) == 4 and t[0][0] in ("bf16", "f32", "f16")]
        matmuls = next((n for key, n in _ATTENTION_KERNELS if key in inst.name), None)
        if len(qkv) >= 2 and matmuls:
            (b, h, sq, d), skv = qkv[0], qkv[1][2]       # [batch, heads, length, head_dim]
            return 2.0 * matmuls * b * h * sq * skv * d
    if "fmha" in target.lower() or "dotproductattention" in target.lower().replace("_", ""):
        q, k = shapes_of(shapes.get(inst.operands[0], "")), shapes_of(shapes.get(inst.operands[1], ""))
        if q and k:
            b, sq, h, d = q[0][1][:4]
            skv = k[0][1][1]
            matmuls = 5 if "backward" in target.lower() else 2
            return 2.0 * matmuls * b * h * sq * skv * d
    return None


def _fusion_param_bytes(inst: Instruction, body: Computation | None, shapes: dict[str, str]) -> float:
    """HBM bytes a fusion reads and writes: a parameter used only by dynamic slices reads only the slices; a
    parameter updated in place by a dynamic-update-slice root moves only the update."""
    if body is None:
        return sum(type_bytes(shapes.get(o, "")) for o in inst.operands) + type_bytes(inst.type_text)
    params = {i.name: int(i.operands[0]) for i in body.instructions
              if i.opcode == "parameter" and i.operands and i.operands[0].isdigit()}
    if not params:   # parameters only in the header
        params = {name: n for n, name in enumerate(body.shapes) if n < len(inst.operands)}
    users: dict[str, list[Instruction]] = {}
    for i in body.instructions:
        for o in i.operands:
            users.setdefault(o, []).append(i)
    root = next((i for i in body.instructions if i.name == body.root), None)
    roots = [next((i for i in body.instructions if i.name == o), None) for o in root.operands] \
        if root is not None and root.opcode == "tuple" else [root]
    in_place = {r.operands[0]: type_bytes(body.shapes.get(r.operands[1], "")) for r in roots
                if r is not None and r.opcode == "dynamic-update-slice"}
    total = 0.0
    for name, index in params.items():
        if index >= len(inst.operands):
            continue
        full = type_bytes(shapes.get(inst.operands[index], ""))
        used = users.get(name, [])
        if name in in_place:
            total += in_place[name]
        elif used and all(u.opcode == "dynamic-slice" and u.operands[0] == name for u in used):
            total += sum(type_bytes(u.type_text) for u in used)
        else:
            total += full
    written = sum(in_place.values()) if in_place else 0.0
    untouched = [r for r in roots if r is None or r.opcode != "dynamic-update-slice"]
    written += sum(type_bytes(r.type_text) for r in untouched if r is not None) if root is not None \
        else type_bytes(inst.type_text)
    return total + written


def _instruction_bytes(inst: Instruction, comp: Computation, computations) -> float:
    if inst.opcode in _FREE or inst.opcode.endswith("-done"):
        return 0.0
    if inst.opcode == "fusion":
        return _fusion_param_bytes(inst, computations.get(_attr(inst.attrs, "calls") or ""), comp.shapes)
    if inst.opcode == "dynamic-slice":
        return 2 * type_bytes(inst.type_text)
    if inst.opcode == "dynamic-update-slice":
        return 2 * type_bytes(comp.shapes.get(inst.operands[1], ""))
    return sum(type_bytes(comp.shapes.get(o, "")) for o in inst.operands) + type_bytes(inst.type_text)


def _collective_tensor_bytes(inst: Instruction, kind: str, shapes: dict[str, str]) -> float:
    """Bytes of the full (unsharded) tensor a collective works on."""
    if kind == "all-gather":          # output is the gathered tensor (for -start, the last tuple element)
        out = shapes_of(inst.type_text)
        return math.prod(out[-1][1]) * dtype_bytes(out[-1][0]) if out else 0.0
    # reduce-scatter: the input is the full tensor (the output one shard); the others: their operands
    return sum(type_bytes(shapes.get(o, "")) for o in inst.operands)


_WIRE = {"all-gather": 1.0, "reduce-scatter": 1.0, "all-reduce": 2.0, "all-to-all": 1.0}


def analyze(hlo_text: str, *, num_devices: int = 1, chips_per_slice: int | None = None) -> HloCost:
    """Per-device FLOPs, HBM bytes and collective bytes of one execution of an optimized HLO module.

    ``chips_per_slice`` (multi-slice programs): a collective whose group holds devices of more than one slice
    (device positions ``// chips_per_slice``) is bound by its DCN hops, so its wire bytes are booked to
    ``dcn_wire_bytes`` as well.
    """
    computations, entry = parse_module(hlo_text)
    counts, fused = multiplicities(computations, entry)
    cost = HloCost()
    for name, times in counts.items():
        comp = computations[name]
        for inst in comp.instructions:
            op = inst.opcode
            if op == "while":
                cost.loops.append((inst.name, trip_count(inst, computations)))
            if op == "dot":
                cost.flops += times * _dot_flops(inst, comp.shapes)
            elif op == "convolution":
                cost.flops += times * _conv_flops(inst, comp.shapes)
            elif op == "custom-call":
                flops = _custom_call_flops(inst, comp.shapes)
                if flops is None:
                    target = re.search(r'custom_call_target="([^"]+)"', inst.attrs)
                    cost.unknown_custom_calls.append(target.group(1) if target else inst.name)
                else:
                    cost.flops += times * flops
            kind = op[:-len("-start")] if op.endswith("-start") else op
            if kind in COLLECTIVES:
                groups = replica_groups(inst.attrs, num_devices)
                group = len(groups[0]) if kind != "collective-permute" else 2
                tensor = _collective_tensor_bytes(inst, kind, comp.shapes)
                wire = tensor if kind == "collective-permute" else _WIRE[kind] * tensor * (group - 1) / group
                cost.collective_bytes[kind] = cost.collective_bytes.get(kind, 0.0) + times * tensor
                cost.wire_bytes[kind] = cost.wire_bytes.get(kind, 0.0) + times * wire
                cost.collective_count[kind] = cost.collective_count.get(kind, 0.0) + times
                if chips_per_slice and len({d // chips_per_slice for d in groups[0]}) > 1:
                    cost.dcn_wire_bytes += times * wire
            if name not in fused:
                cost.hbm_bytes += times * _instruction_bytes(inst, comp, computations)
    return cost


def format_cost(cost: HloCost) -> str:
    """One line: FLOPs, HBM bytes, wire bytes per collective kind and the loops found."""
    wire = ", ".join(f"{k} {v / 2**30:.3f} GiB" for k, v in sorted(cost.wire_bytes.items())) or "none"
    loops = ", ".join(f"{n}x{t}" for n, t in cost.loops[:6]) or "none"
    return (f"{cost.flops / 1e12:.3f} TFLOP, HBM {cost.hbm_bytes / 2**30:.2f} GiB, wire bytes sent: {wire}; "
            f"loops {loops}")


def dumps(cost: HloCost) -> str:
    return json.dumps(dataclasses.asdict(cost))
