//! `wick convert` end to end: real `torch.save` files converted by the real binary and compared
//! bit for bit with what `torch.load` gave for them (tests/fixtures/pth/*.expected.safetensors,
//! written by scripts/make_pth_fixtures.py), hostile archives refused without executing,
//! writing or panicking, `--check-config`, and a mutation run through the reader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use sha2::{Digest, Sha256};
use wick::convert::{convert_bytes, pickle, torch, Limits};

use crate::util::process::wick;
use crate::util::{config_text, fixture};

fn pth(name: &str) -> PathBuf {
    fixture(&format!("pth/{name}"))
}

/// Runs `wick convert ARGS` in `dir` (so a payload that ran would leave its file there).
fn convert(dir: &Path, args: &[&str]) -> Output {
    wick()
        .arg("convert")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run wick")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// name → (dtype, shape, bytes) of a safetensors file, read with the reference crate.
type Tensors = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

fn tensors_of(bytes: &[u8]) -> (Tensors, BTreeMap<String, String>) {
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes).expect("metadata");
    let file = safetensors::SafeTensors::deserialize(bytes).expect("valid safetensors");
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            )
        })
        .collect();
    (
        tensors,
        metadata
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    )
}

fn assert_bit_identical(converted: &[u8], expected_file: &str) {
    let (got, _) = tensors_of(converted);
    let (want, _) = tensors_of(&std::fs::read(pth(expected_file)).unwrap());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{expected_file}"
    );
    for (name, (dtype, shape, data)) in &want {
        let (got_dtype, got_shape, got_data) = &got[name];
        assert_eq!(
            (got_dtype, got_shape),
            (dtype, shape),
            "{expected_file}: {name}"
        );
        assert!(got_data == data, "{expected_file}: {name}: bytes differ");
    }
}

/// (input, --key, what torch.load gave)
const CONVERTIBLE: [(&str, Option<&str>, &str); 9] = [
    ("state_dict.pth", None, "state_dict.expected.safetensors"),
    (
        "state_dict_nocrc.pth",
        None,
        "state_dict.expected.safetensors",
    ),
    ("state_dict_p3.pth", None, "state_dict.expected.safetensors"),
    ("state_dict_p4.pth", None, "state_dict.expected.safetensors"),
    ("state_dict_p5.pth", None, "state_dict.expected.safetensors"),
    (
        "checkpoint_adam.pth",
        Some("model"),
        "checkpoint_adam.expected.safetensors",
    ),
    ("views.pth", None, "views.expected.safetensors"),
    ("dtypes.pth", None, "dtypes.expected.safetensors"),
    ("parameters.pth", None, "parameters.expected.safetensors"),
];

#[test]
fn converted_tensors_are_bit_identical_to_torch_load() {
    let dir = tempfile::tempdir().unwrap();
    for (input, key, expected) in CONVERTIBLE {
        let out = dir.path().join(input.replace(".pth", ".safetensors"));
        let mut args = vec![pth(input).display().to_string(), out.display().to_string()];
        if let Some(key) = key {
            args.extend(["--key".to_string(), key.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = convert(dir.path(), &args);
        assert!(output.status.success(), "{input}: {}", text(&output.stderr));
        let converted = std::fs::read(&out).unwrap();
        assert_bit_identical(&converted, expected);

        // wick's own strict header validation accepts what wick wrote.
        wick::state_dict::read_header(&out).unwrap();
        let (_, metadata) = tensors_of(&converted);
        let source = std::fs::read(pth(input)).unwrap();
        assert_eq!(
            metadata["source_sha256"],
            wick::state_dict::hex(&Sha256::digest(&source))
        );
        assert_eq!(metadata["format"], "pt");

        // The library path (used by the fuzz target) gives the same tensors.
        let in_memory =
            convert_bytes(&source, key, &Limits::for_input(source.len() as u64)).unwrap();
        assert_bit_identical(&in_memory, expected);
    }
}

#[test]
fn a_training_checkpoint_lists_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let input = pth("checkpoint_adam.pth").display().to_string();
    let output = convert(dir.path(), &[&input, "out.safetensors", "--key", "model"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("state dict at key \"model\": 4 tensors (F32 ×4)"),
        "{stdout}"
    );
    assert!(stdout.contains("dropped 4 entries"), "{stdout}");
    for line in [
        "optimizer  dict of 2 entries, 12 tensors inside",
        "epoch      int 3",
        "note       str \"adam, three steps\"",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    let (_, metadata) = tensors_of(&std::fs::read(dir.path().join("out.safetensors")).unwrap());
    assert_eq!(metadata["source_key"], "model");

    // Without --key the top level has no tensors: the error says which key to pass.
    let output = convert(dir.path(), &[&input, "top.safetensors"]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("no tensors at the top level; try --key model (4 tensors)"),
        "{stderr}"
    );
    let output = convert(
        dir.path(),
        &[&input, "top.safetensors", "--key", "state_dict"],
    );
    assert!(
        text(&output.stderr).contains("has no key \"state_dict\"; its keys are: model"),
        "{}",
        text(&output.stderr)
    );
    assert!(!dir.path().join("top.safetensors").exists());
}

fn write_config(dir: &Path, hidden: usize) -> PathBuf {
    let path = dir.join("config.toml");
    let model = format!(
        "[[models]]\nname = \"net\"\narchitecture = \"mlp\"\nconfig = {{ in_features = 8, hidden = [{hidden}], \
         out_features = 4, activation = \"relu\", layer_names = [\"fc1\", \"fc2\"] }}\n"
    );
    std::fs::write(&path, config_text(Path::new("."), "", &model)).unwrap();
    path
}

/// `wick convert checkpoint_adam.pth OUT --key model --check-config CONFIG --model MODEL` in
/// `dir`.
fn convert_checked(dir: &Path, out: &str, config: &str, model: &str) -> Output {
    let input = pth("checkpoint_adam.pth").display().to_string();
    let args = [
        &input,
        out,
        "--key",
        "model",
        "--check-config",
        config,
        "--model",
        model,
    ];
    convert(dir, &args)
}

#[test]
fn check_config_runs_the_strict_check_before_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 16).display().to_string();
    let output = convert_checked(dir.path(), "ok.safetensors", &config, "net");
    assert!(
        output.status.success(),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(dir.path().join("ok.safetensors").exists());
    // The report is the one `wick check` prints for the same file.
    let check = wick()
        .args([
            "check",
            "--config",
            &config,
            "--model",
            "net",
            "ok.safetensors",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(check.status.success());
    assert!(
        text(&output.stdout).contains(&text(&check.stdout)),
        "{}\n---\n{}",
        text(&output.stdout),
        text(&check.stdout)
    );

    // A model that does not match: the report is printed and nothing is written.
    let config = write_config(dir.path(), 32).display().to_string();
    let output = convert_checked(dir.path(), "bad.safetensors", &config, "net");
    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("size mismatch for fc1.weight"), "{stdout}");
    assert!(
        stdout.contains("the strict check failed: bad.safetensors was not written"),
        "{stdout}"
    );
    assert!(!dir.path().join("bad.safetensors").exists());
    let output = convert_checked(dir.path(), "bad.safetensors", &config, "nope");
    assert!(
        text(&output.stderr).contains("no model \"nope\""),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(leftovers(dir.path()), ["config.toml", "ok.safetensors"]);
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Hostile or broken inputs and a phrase their refusal must contain.
const REFUSED: [(&str, &str); 25] = [
    ("malicious/global_os_system.pth", "refusing global `os.system` (GLOBAL)"),
    ("malicious/stack_global_os_system.pth", "refusing global `os.system` (STACK_GLOBAL)"),
    ("malicious/posix_system_pickled.pth", "refusing global `posix.system`"),
    ("malicious/builtins_eval_reduce.pth", "refusing global `builtins.eval`"),
    ("malicious/inst_os_system.pth", "refusing global `os.system` (INST)"),
    ("malicious/obj_allowlisted_class.pth", "refusing opcode OBJ"),
    ("malicious/newobj_allowlisted_class.pth", "refusing opcode NEWOBJ"),
    ("malicious/build_on_function.pth", "BUILD expects a dict or a tensor"),
    ("malicious/appends_on_global.pth", "APPENDS expects a list"),
    ("malicious/importlib_import_module.pth", "refusing global `importlib.import_module`"),
    ("malicious/pkgutil_resolve_name.pth", "refusing global `pkgutil.resolve_name`"),
    ("malicious/builtins_getattr.pth", "refusing global `builtins.getattr`"),
    ("malicious/qualname_traversal.pth", "refusing global `torch._utils._rebuild_tensor_v2.__globals__`"),
    ("malicious/memo_confusion.pth", "`torch.FloatStorage` is not callable"),
    ("malicious/zip_bomb_overlap.pth", "zip entries overlap"),
    ("malicious/zip_bomb_deflate.pth", "is compressed (Deflated"),
    ("malicious/storage_larger_than_archive.pth", "declares 2147483647 × F32 (8589934588 bytes), but its record in the archive holds 16 bytes"),
    ("malicious/view_out_of_bounds.pth", "reaches element 4 of storage \"0\", which has 4 elements"),
    ("malicious/shape_overflow.pth", "has a dimension of 4611686018427387904"),
    ("malicious/short_rebuild_args.pth", "`torch._utils._rebuild_tensor_v2` called with 2 argument(s)"),
    ("malicious/bare_pickle_os_system.pth", "a bare pickle"),
    ("legacy.pth", "the legacy torch.save format"),
    ("truncated.pth", "not a readable zip archive"),
    ("state_dict.expected.safetensors", "not a torch.save checkpoint"),
    ("malicious", "is not a regular file"),
];

#[test]
fn hostile_files_are_refused_without_executing_writing_or_panicking() {
    for (input, phrase) in REFUSED {
        let dir = tempfile::tempdir().unwrap();
        // An existing output must survive a refused conversion untouched.
        std::fs::write(dir.path().join("out.safetensors"), b"previous").unwrap();
        let output = convert(
            dir.path(),
            &[&pth(input).display().to_string(), "out.safetensors"],
        );
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{input}: {stderr}");
        assert!(
            stderr.starts_with("error: cannot convert "),
            "{input}: {stderr}"
        );
        assert!(
            stderr.contains(phrase),
            "{input}: expected {phrase:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{input}: {stderr}");
        assert_eq!(
            std::fs::read(dir.path().join("out.safetensors")).unwrap(),
            b"previous",
            "{input}"
        );
        assert_eq!(
            leftovers(dir.path()),
            ["out.safetensors"],
            "{input}: a payload ran or a temp file was left"
        );
    }
}

#[test]
fn refuses_to_overwrite_its_own_input() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("model.pth");
    std::fs::copy(pth("state_dict.pth"), &copy).unwrap();
    let path = copy.display().to_string();
    let output = convert(dir.path(), &[&path, &path]);
    assert!(
        text(&output.stderr).contains("is the input file"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(pth("state_dict.pth")).unwrap()
    );
}

/// xorshift64*: deterministic, dependency-free randomness for the mutation run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..=rng.below(4) {
        if data.is_empty() {
            break;
        }
        let at = rng.below(data.len());
        match rng.below(6) {
            0 => data[at] ^= 1 << rng.below(8),
            1 => data[at] = rng.next() as u8,
            2 => data.truncate(at),
            3 => data.insert(at, rng.next() as u8),
            4 => {
                let len = rng.below(16).min(data.len() - at);
                let chunk = data[at..at + len].to_vec();
                let to = rng.below(data.len());
                data.splice(to..to, chunk);
            }
            _ => {
                // Interesting integers where sizes and lengths live.
                let value =
                    [0u32, 1, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, u32::MAX][rng.below(8)];
                let end = (at + 4).min(data.len());
                let bytes = value.to_le_bytes();
                data[at..end].copy_from_slice(&bytes[..end - at]);
            }
        }
    }
    data
}

/// data.pkl of a fixture, read with the zip crate.
fn data_pkl(archive: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
    let name = zip
        .file_names()
        .map(|n| n.unwrap().into_owned())
        .find(|n| n.ends_with("/data.pkl"))
        .unwrap();
    let mut out = Vec::new();
    // Raw (stored) bytes: state_dict_nocrc.pth records no CRCs.
    let index = zip.index_for_name(&name).unwrap();
    zip.by_index_raw(index)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Thousands of mutated fixtures through the archive reader and the pickle machine: anything
/// may be refused, nothing may panic (the same property the cargo-fuzz targets check for hours).
#[test]
fn mutated_fixtures_never_panic_the_reader() {
    let mut rng = Rng(0x5eed_0ff1_c7e5);
    let mut limits = Limits::for_input(0);
    limits.plan.max_output_bytes = 8 << 20;
    let (mut whole, mut pickles, mut accepted, mut parsed) = (0, 0, 0, 0);
    for (input, _, _) in CONVERTIBLE {
        let source = std::fs::read(pth(input)).unwrap();
        let pkl = data_pkl(&source);
        for _ in 0..400 {
            let mutated = mutate(&mut rng, &source);
            whole += 1;
            accepted += usize::from(convert_bytes(&mutated, Some("model"), &limits).is_ok());
            let _ = convert_bytes(&mutated, None, &limits);

            let mutated = mutate(&mut rng, &pkl);
            pickles += 1;
            if let Ok(unpickled) = pickle::parse(&mutated, &pickle::PickleLimits::default()) {
                parsed += 1;
                let _ = torch::describe(&unpickled, unpickled.root);
                let _ = torch::select(&unpickled, None);
            }
        }
    }
    assert_eq!((whole, pickles), (3600, 3600));
    // Some mutations leave valid checkpoints and pickles (padding, string contents, numbers), so
    // the run reaches the writer and the selection, not only the first checks.
    eprintln!("mutation run: {accepted} of {whole} archives converted, {parsed} of {pickles} pickles parsed");
    assert!(accepted > 0 && parsed > 0);
}

/// The pickle reader is reachable only from the CLI: no serving module names it.
#[test]
fn the_serving_path_never_reaches_the_pickle_reader() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut todo = vec![src.clone()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                if relative != "convert" {
                    todo.push(path);
                }
            } else if relative != "main.rs" && relative != "lib.rs" {
                let code = std::fs::read_to_string(&path).unwrap();
                for needle in ["crate::convert", "super::convert", "wick::convert"] {
                    assert!(!code.contains(needle), "src/{relative} uses {needle}");
                }
            }
        }
    }
}
