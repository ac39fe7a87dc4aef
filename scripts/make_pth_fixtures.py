#!/usr/bin/env python3
"""Fixtures for `wick convert` (issue 7): real `torch.save` files, what `torch.load` gives for them,
and hostile archives that must be refused.

Run once; the outputs are committed. Pinned environment: torch==2.15.0, safetensors==0.8.0,
numpy (scripts/requirements-fixtures.txt lists the full set):

    python scripts/make_pth_fixtures.py

Writes tests/fixtures/pth/
  state_dict.pth                  a plain state dict (Linear, BatchNorm1d with its I64 counter,
                                  Linear), pickle protocol 2 (torch.save's default)
  state_dict_p3/_p4/_p5.pth       the same state dict with pickle protocols 3, 4 and 5
  state_dict_nocrc.pth            the same, saved with compute_crc32 = False (zip CRCs of 0)
  state_dict.expected.safetensors what torch.load gives for all five, made contiguous
  checkpoint_adam.pth             {'model', 'optimizer' (Adam state after 3 steps), 'epoch',
                                  'loss', 'note'}, the state dict under 'model'
  checkpoint_adam.expected.safetensors   torch.load(...)['model']
  views.pth (+ .expected)         tensors sharing storages: offsets, strides, transposes,
                                  stride-0 broadcasts, 0-dim and empty views, a storage larger
                                  than what is saved of it
  dtypes.pth (+ .expected)        F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL, with NaN payloads,
                                  signed zeros, infinities and subnormals
  parameters.pth (+ .expected)    nn.Parameter values (torch._utils._rebuild_parameter) and a
                                  tensor with Python attributes (_rebuild_from_type_v2)
  legacy.pth                      the pre-1.6 format (_use_new_zipfile_serialization=False)
  truncated.pth                   state_dict.pth cut short
  malicious/*.pth                 hostile archives made with plain `pickle`, `zipfile` and
                                  hand-written opcodes: no torch involved

Payloads in the hostile files would run `touch wick_pickle_was_executed`: the tests run the
converter in an empty directory and check that the file never appears.

Expected files hold exactly the tensors `wick convert` must write (same names, contiguous, same
dtypes): the Rust tests compare them bit for bit.
"""

import io
import os
import warnings
import pickle
import struct
import zipfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "pth")
MALICIOUS = os.path.join(OUT, "malicious")
PAYLOAD = "touch wick_pickle_was_executed"


def out(*parts):
    p = os.path.join(OUT, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p


# ------------------------------------------------------------------------------------------------
# Real torch.save files


def make_torch_fixtures():
    import torch
    from torch import nn
    from safetensors.torch import save_file

    torch.manual_seed(0)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Detected pickle protocol")

    def expected(tensors, name):
        """What torch.load gives, contiguous and unshared, so safetensors can store it."""
        save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, out(name))

    def reload(name, weights_only=True):
        # torch's weights-only unpickler refuses FRAME (protocol 4 and 5); these files are our
        # own, so the full unpickler is safe for them.
        return torch.load(out(name), weights_only=weights_only)

    # A plain state dict, four pickle protocols.
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))
    net.train()
    net(torch.randn(5, 8))  # moves the BatchNorm running stats and its I64 counter
    sd = net.state_dict()
    torch.save(sd, out("state_dict.pth"))
    for protocol in (3, 4, 5):
        torch.save(sd, out(f"state_dict_p{protocol}.pth"), pickle_protocol=protocol)
    # torch.save can skip the zip CRCs (they are then 0): torch.load still reads such files.
    from torch.utils.serialization import config

    config.save.compute_crc32 = False
    torch.save(sd, out("state_dict_nocrc.pth"))
    config.save.compute_crc32 = True
    assert all(torch.equal(reload("state_dict_nocrc.pth")[k], sd[k]) for k in sd)
    loaded = reload("state_dict.pth")
    for protocol in (3, 4, 5):
        again = reload(f"state_dict_p{protocol}.pth", weights_only=protocol < 4)
        assert all(torch.equal(again[k], loaded[k]) for k in loaded)
    expected(loaded, "state_dict.expected.safetensors")

    with open(out("state_dict.pth"), "rb") as f:
        whole = f.read()
    with open(out("truncated.pth"), "wb") as f:
        f.write(whole[: len(whole) // 2])

    # A full training checkpoint with Adam state; the model matches wick's `mlp` architecture
    # (layer_names = ["fc1", "fc2"]).
    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 16)
            self.fc2 = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    model = Mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    for _ in range(3):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "loss": loss.item(),
        "note": "adam, three steps",
    }
    torch.save(checkpoint, out("checkpoint_adam.pth"))
    expected(reload("checkpoint_adam.pth")["model"], "checkpoint_adam.expected.safetensors")

    # Views that share storages.
    base = torch.arange(48, dtype=torch.float32) * 0.5 - 3.0
    grid = base.view(6, 8)
    big = torch.randn(100)
    longs = torch.arange(-12, 12, dtype=torch.int64)
    halves = torch.randn(4, 6).half()
    views = {
        "base": base,
        "grid": grid,
        "row": grid[2],
        "column": grid[:, 3],
        "transposed": grid.t(),
        "block": grid[1:4, 2:7],
        "every_other": base[1::2],
        "broadcast": grid[0:1, :].expand(3, 8),
        "permuted": base.view(2, 3, 8).permute(2, 0, 1),
        "scalar_view": base[7],
        "empty": base[5:5],
        "tail_of_big": big[90:95],
        "longs_reversed_blocks": longs.view(4, 6)[::2, 1::2],
        "halves": halves,
        "halves_t": halves.t(),
    }
    torch.save(views, out("views.pth"))
    loaded = reload("views.pth")
    assert loaded["row"].untyped_storage().data_ptr() == loaded["base"].untyped_storage().data_ptr()
    expected(loaded, "views.expected.safetensors")

    # Every dtype the converter preserves, with awkward values.
    special = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), float("-inf"), 1e-40, -3.5, 65504.0])
    nan_payload = torch.tensor([0x7FC00001, 0x7F800001, -1], dtype=torch.int32).view(torch.float32)
    dtypes = {
        "f32": torch.cat([torch.randn(6), special, nan_payload]),
        "f16": torch.cat([torch.randn(6), special]).half(),
        "bf16": torch.cat([torch.randn(6), special]).bfloat16(),
        "f64": torch.cat([torch.randn(6, dtype=torch.float64), special.double()]),
        "i64": torch.tensor([-(2**63), 2**63 - 1, 0, -1, 123456789012345]),
        "i32": torch.tensor([-(2**31), 2**31 - 1, 0, -1], dtype=torch.int32).view(2, 2),
        "i16": torch.tensor([-(2**15), 2**15 - 1, 7], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, 0, -1], dtype=torch.int8),
        "u8": torch.arange(0, 256, 37, dtype=torch.uint8),
        "bool": torch.tensor([[True, False, True], [False, False, True]]),
        "bool_t": torch.tensor([[True, False, True], [False, False, True]]).t(),
        "f32_scalar": torch.tensor(2.5),
    }
    torch.save(dtypes, out("dtypes.pth"))
    loaded = reload("dtypes.pth")
    for k in dtypes:
        assert loaded[k].dtype == dtypes[k].dtype, k
    expected(loaded, "dtypes.expected.safetensors")

    # nn.Parameter values and a tensor carrying a Python attribute.
    weight = nn.Parameter(torch.randn(3, 2))
    tagged = torch.randn(2)
    tagged.note = "has __dict__ state"
    parameters = {"weight": weight, "frozen": nn.Parameter(torch.ones(2), requires_grad=False), "tagged": tagged}
    torch.save(parameters, out("parameters.pth"))
    expected(reload("parameters.pth"), "parameters.expected.safetensors")

    # The legacy (pre-1.6) format: refused with a message saying how to re-save.
    torch.save(sd, out("legacy.pth"), _use_new_zipfile_serialization=False)


# ------------------------------------------------------------------------------------------------
# Hostile archives: plain pickle and zipfile only


def torch_layout_zip(name, data_pkl, records=None, prefix="archive"):
    """A zip laid out like torch.save's: <prefix>/data.pkl, <prefix>/data/<key>, version, byteorder."""
    with zipfile.ZipFile(os.path.join(MALICIOUS, name), "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", data_pkl)
        for key, data in (records or {}).items():
            z.writestr(f"{prefix}/data/{key}", data)
        z.writestr(f"{prefix}/version", b"3\n")
        z.writestr(f"{prefix}/byteorder", b"little")


class Reduce:
    """pickle.dumps(Reduce(f, args)) is the classic payload: unpickling calls f(*args)."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def binunicode(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def short_binunicode(text):
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def storage_pid(storage_type, key, numel):
    """MARK 'storage' GLOBAL torch <type> key 'cpu' numel TUPLE BINPERSID, as torch.save writes it."""
    return (
        b"(" + binunicode("storage") + b"ctorch\n" + storage_type.encode() + b"\n"
        + binunicode(key) + binunicode("cpu") + b"J" + struct.pack("<i", numel) + b"tQ"
    )


def long1(value):
    data = value.to_bytes(16, "little", signed=True).rstrip(b"\x00") or b"\x00"
    if data[-1] & 0x80:
        data += b"\x00"
    return b"\x8a" + bytes([len(data)]) + data


def rebuild_tensor(pid, offset, size, stride):
    """_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    ints = lambda xs: b"(" + b"".join(long1(v) for v in xs) + b"t"
    return (
        b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + long1(offset) + ints(size) + ints(stride)
        + b"\x89ccollections\nOrderedDict\n)RtR"
    )


def state_dict_of(entries):
    """PROTO 2, an OrderedDict of (name, tensor bytecode) entries, STOP."""
    body = b"".join(binunicode(k) + v for k, v in entries)
    return b"\x80\x02ccollections\nOrderedDict\n)R(" + body + b"u."


def make_malicious():
    os.makedirs(MALICIOUS, exist_ok=True)
    payload = binunicode(PAYLOAD)

    # os.system through GLOBAL (written by hand so the module is literally `os`) and through
    # STACK_GLOBAL (protocol 4), and what pickle.dumps itself writes for os.system (`posix`).
    torch_layout_zip("global_os_system.pth", b"\x80\x02cos\nsystem\n" + payload + b"\x85R.")
    torch_layout_zip(
        "stack_global_os_system.pth",
        b"\x80\x04" + short_binunicode("os") + short_binunicode("system") + b"\x93" + payload + b"\x85R.",
    )
    torch_layout_zip("posix_system_pickled.pth", pickle.dumps(Reduce(os.system, (PAYLOAD,)), protocol=2))

    # builtins.eval through REDUCE.
    code = f"__import__('os').system({PAYLOAD!r})"
    torch_layout_zip("builtins_eval_reduce.pth", pickle.dumps(Reduce(eval, (code,)), protocol=4))

    # INST, OBJ and NEWOBJ: opcodes that call a class directly. INST names its class inline;
    # OBJ and NEWOBJ are tried on an allowlisted class; BUILD tries to set attributes on a
    # function object; APPENDS tries to call `.extend` on something that is not a list.
    torch_layout_zip("inst_os_system.pth", b"\x80\x02(" + payload + b"ios\nsystem\n.")
    torch_layout_zip("obj_allowlisted_class.pth", b"\x80\x02(ccollections\nOrderedDict\no.")
    torch_layout_zip("newobj_allowlisted_class.pth", b"\x80\x02ccollections\nOrderedDict\n)\x81.")
    torch_layout_zip(
        "build_on_function.pth",
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}" + binunicode("__code__") + payload + b"sb.",
    )
    torch_layout_zip(
        "appends_on_global.pth",
        b"\x80\x02ccollections\nOrderedDict\n(" + payload + b"e.",
    )

    # Indirection: importlib.import_module, pkgutil.resolve_name, getattr, and a dotted
    # qualified name that walks from an allowlisted function to its module's globals.
    import importlib
    import pkgutil

    torch_layout_zip("importlib_import_module.pth", pickle.dumps(Reduce(importlib.import_module, ("os",)), protocol=2))
    torch_layout_zip("pkgutil_resolve_name.pth", pickle.dumps(Reduce(pkgutil.resolve_name, ("os:system",)), protocol=4))
    torch_layout_zip(
        "builtins_getattr.pth",
        b"\x80\x02cbuiltins\ngetattr\n(ctorch._utils\n_rebuild_tensor_v2\n" + binunicode("__globals__") + b"tR.",
    )
    torch_layout_zip(
        "qualname_traversal.pth",
        b"\x80\x04" + short_binunicode("torch._utils") + short_binunicode("_rebuild_tensor_v2.__globals__")
        + b"\x93.",
    )

    # Memo confusion: memo slot 0 first holds collections.OrderedDict (a callable the reader
    # allows), is then overwritten with torch.FloatStorage, and BINGET 0 is REDUCEd with a huge
    # size: a reader that trusts what it first saw in a slot would build an OrderedDict, one that
    # calls the storage type allocates 4 TB. Both must be refused.
    torch_layout_zip(
        "memo_confusion.pth",
        b"\x80\x02ccollections\nOrderedDict\nq\x000ctorch\nFloatStorage\nq\x000h\x00("
        + long1(2**40) + b"tR.",
    )

    # Zip bombs. One deflate stream of 1 MiB of zeros (about 1 KiB compressed) referenced by 200
    # central-directory entries (overlapping entries, after David Fifield's non-recursive bomb):
    # 200 MiB from a 20 KiB file. And a single record deflated 1000:1.
    make_overlap_bomb("zip_bomb_overlap.pth", copies=200, size=1 << 20)
    zeros = 1 << 24
    data_pkl = state_dict_of([("w", rebuild_tensor(storage_pid("FloatStorage", "0", zeros // 4), 0, [zeros // 4], [1]))])
    with zipfile.ZipFile(os.path.join(MALICIOUS, "zip_bomb_deflate.pth"), "w") as z:
        z.writestr("archive/data.pkl", data_pkl, compress_type=zipfile.ZIP_STORED)
        z.writestr("archive/data/0", bytes(zeros), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        z.writestr("archive/version", b"3\n")

    # A storage that declares far more bytes than the archive holds (4 TiB in a 16-byte record),
    # and a view that reaches past the end of its (honest) storage.
    four_floats = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    torch_layout_zip(
        "storage_larger_than_archive.pth",
        state_dict_of([("w", rebuild_tensor(storage_pid("FloatStorage", "0", 2**31 - 1), 0, [2**20, 2**20], [2**20, 1]))]),
        {"0": four_floats},
    )
    torch_layout_zip(
        "view_out_of_bounds.pth",
        state_dict_of([("w", rebuild_tensor(storage_pid("FloatStorage", "0", 4), 2, [3], [1]))]),
        {"0": four_floats},
    )
    torch_layout_zip(
        "shape_overflow.pth",
        state_dict_of([("w", rebuild_tensor(storage_pid("FloatStorage", "0", 4), 0, [2**62, 2**62, 16], [0, 0, 0]))]),
        {"0": four_floats},
    )
    # _rebuild_tensor_v2 with two arguments (candle's reader panics on this).
    torch_layout_zip(
        "short_rebuild_args.pth",
        b"\x80\x02ccollections\nOrderedDict\n)R" + binunicode("w")
        + b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage_pid("FloatStorage", "0", 4) + b"K\x00tRs.",
        {"0": four_floats},
    )

    # A bare pickle (no zip): legacy torch.save or pickle.dump.
    with open(os.path.join(MALICIOUS, "bare_pickle_os_system.pth"), "wb") as f:
        f.write(b"\x80\x02cos\nsystem\n" + payload + b"\x85R.")


def make_overlap_bomb(name, copies, size):
    kernel = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = kernel.compress(bytes(size)) + kernel.flush()
    crc = zlib.crc32(bytes(size))
    entries = [("archive/data.pkl", state_dict_of([
        (f"w{i}", rebuild_tensor(storage_pid("FloatStorage", str(i), size // 4), 0, [size // 4], [1]))
        for i in range(copies)
    ]), 0)]
    body = io.BytesIO()
    central = io.BytesIO()

    def local_header(filename, method, crc, csize, usize):
        fn = filename.encode()
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, csize, usize, len(fn), 0) + fn

    def central_header(filename, method, crc, csize, usize, offset):
        fn = filename.encode()
        return struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, csize, usize, len(fn), 0, 0, 0, 0, 0, offset
        ) + fn

    pkl_name, pkl, _ = entries[0]
    pkl_crc = zlib.crc32(pkl)
    body.write(local_header(pkl_name, 0, pkl_crc, len(pkl), len(pkl)) + pkl)
    central.write(central_header(pkl_name, 0, pkl_crc, len(pkl), len(pkl), 0))
    kernel_offset = body.tell()
    body.write(local_header("archive/data/0", 8, crc, len(compressed), size) + compressed)
    for i in range(copies):
        central.write(central_header(f"archive/data/{i}", 8, crc, len(compressed), size, kernel_offset))
    cd = central.getvalue()
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, copies + 1, copies + 1, len(cd), body.tell(), 0)
    with open(os.path.join(MALICIOUS, name), "wb") as f:
        f.write(body.getvalue() + cd + eocd)


def main():
    make_torch_fixtures()
    make_malicious()
    total = 0
    for dirpath, _, files in sorted(os.walk(OUT)):
        for name in sorted(files):
            size = os.path.getsize(os.path.join(dirpath, name))
            total += size
            print(f"{size:>9}  {os.path.relpath(os.path.join(dirpath, name), ROOT)}")
    print(f"{total:>9}  total")


if __name__ == "__main__":
    main()
