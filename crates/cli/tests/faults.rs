//! Faults: `tern train` killed with SIGKILL at random moments (some of them while it writes a
//! checkpoint) and resumed each time ends with the same weights, bit for bit, as a run that
//! was never interrupted, and no checkpoint on disk is ever unreadable; a checkpoint that
//! cannot be written is a clear error that leaves the previous one intact.

mod common;
use common::write_mnist_like;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tern_core::Rng;

const EPOCHS: &str = "12";

fn train_args(data: &Path, out: &Path) -> Vec<String> {
    [
        "train",
        "--data",
        "mnist",
        "--data-path",
        data.to_str().unwrap(),
        "--model",
        "lenet5",
        "--epochs",
        EPOCHS,
        "--batch",
        "32",
        "--crop-pad",
        "2",
        "--hflip",
        "--seed",
        "3",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let c = tern_core::checkpoint::load(&dir.join("model.safetensors")).expect("a readable checkpoint");
    c.tensors.iter().map(|(n, t)| (n.clone(), t.data().to_vec())).collect()
}

fn epochs_done(dir: &Path) -> usize {
    let Ok(c) = tern_core::checkpoint::load(&dir.join("model.safetensors")) else { return 0 };
    c.meta["epoch"].as_u64().unwrap_or(0) as usize
}

#[test]
fn killed_and_resumed_training_ends_with_the_weights_of_an_uninterrupted_run() {
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 160, 40);
    let out = tempfile::tempdir().unwrap();
    let (whole, killed) = (out.path().join("whole"), out.path().join("killed"));
    let bin = env!("CARGO_BIN_EXE_tern");

    let t0 = Instant::now();
    let o = Command::new(bin).args(train_args(data.path(), &whole)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full = t0.elapsed();

    let mut rng = Rng::new(11);
    let (mut kills, mut kills_mid_write, mut attempts) = (0, 0, 0);
    while epochs_done(&killed) < EPOCHS.parse().unwrap() {
        attempts += 1;
        assert!(attempts < 200, "no progress after {attempts} attempts");
        let mut args = train_args(data.path(), &killed);
        if killed.join("model.safetensors").exists() {
            args = ["train", "--resume", killed.to_str().unwrap(), "--quiet"].map(String::from).to_vec();
        }
        let mut child = Command::new(bin).args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        // kill within about one epoch's time of the start (process start-up included), so
        // that each start gets at most a little further, while kills are due
        let per_epoch = full.as_secs_f64() / EPOCHS.parse::<f64>().unwrap();
        let when = Duration::from_secs_f64(per_epoch * (0.3 + 1.5 * rng.uniform() as f64));
        let deadline = Instant::now() + when;
        // every other start is killed the moment a checkpoint's temporary file appears
        // (inside the write, before the rename); the others at the random time
        let at_write = attempts % 2 == 0;
        let mine = format!(".tmp-{}", child.id());
        let tmp_exists = || {
            std::fs::read_dir(&killed)
                .is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(&mine)))
        };
        let mut finished = false;
        while at_write || Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            if at_write && kills < 12 && tmp_exists() {
                break;
            }
            std::thread::sleep(Duration::from_micros(if at_write { 50 } else { 1000 }));
        }
        if !finished && kills < 12 {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            // a temporary checkpoint left behind: the kill landed inside a write
            kills_mid_write += tmp_exists() as usize;
        } else {
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "{:?}: {}", args, String::from_utf8_lossy(&o.stderr));
        }
        // whatever moment the kill hit, the checkpoint on disk is readable
        if killed.join("model.safetensors").exists() {
            weights(&killed);
        }
    }
    eprintln!("{kills} kills ({kills_mid_write} inside a checkpoint write), {attempts} starts");
    // the resumes cleared what the killed writes left behind
    let leftovers: Vec<_> = std::fs::read_dir(&killed)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert!(kills >= 10, "only {kills} kills landed");
    assert!(kills_mid_write >= 2, "only {kills_mid_write} kills landed inside a checkpoint write");
    let (a, b) = (weights(&whole), weights(&killed));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (_, tb)) in a.iter().zip(&b) {
        assert_eq!(ta, tb, "{na} differs between the uninterrupted and the killed-and-resumed run");
    }
}

#[test]
fn a_checkpoint_that_cannot_be_written_is_a_clear_error_and_the_old_one_stays() {
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 64, 16);
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let bin = env!("CARGO_BIN_EXE_tern");
    let mut args = train_args(data.path(), &run);
    args[8] = "1".into(); // --epochs 1
    let o = Command::new(bin).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = std::fs::read(run.join("model.safetensors")).unwrap();
    // the next checkpoint's temporary file cannot be created: a folder of that name blocks it
    // (a read-only folder or a full disk fail at the same call; permissions do not bind root)
    let blocker = |pid: u32| run.join(format!(".model.safetensors.tmp-{pid}"));
    let mut child = Command::new(bin)
        .args(["train", "--resume", run.to_str().unwrap(), "--epochs", "2", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::create_dir_all(blocker(child.id())).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "training succeeded although its checkpoint could not be written");
    assert!(err.contains(".model.safetensors.tmp-"), "the error does not name the file: {err}");
    assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), before, "the previous checkpoint changed");
}
