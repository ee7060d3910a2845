//! The emulator catches what a GPU would hide: each self-test kernel (kernels/emu_selftest.cu) carries one
//! deliberate bug, and the emulator must report it, as a typed error naming the kernel and the source
//! line, or, for a race, as seed-dependent output.
#![cfg(feature = "emulator")]

use gated_sdpa::emulator::Emulator;
use gated_sdpa::testing::selftest::{run_selftest, SelfTest};
use gated_sdpa::GsdpaError;

fn input() -> Vec<f32> {
    (0..64).map(|i| i as f32 + 0.5).collect()
}

fn expected() -> Vec<f32> {
    let x = input();
    (0..64).map(|i| 2.0 * x[(i + 32) % 64]).collect()
}

fn error_of(test: SelfTest, seed: u64) -> String {
    match run_selftest(&Emulator::new().with_seed(seed), test, &input()) {
        Err(GsdpaError::Emulator(message)) => message,
        other => panic!("{test:?} should fail with an emulator error, got {other:?}"),
    }
}

#[test]
fn correct_kernel_is_right_for_every_seed() {
    for seed in 0..16 {
        let out = run_selftest(
            &Emulator::new().with_seed(seed),
            SelfTest::Correct,
            &input(),
        )
        .unwrap();
        assert_eq!(out, expected(), "seed {seed}");
    }
}

#[test]
fn missing_barrier_shows_up_as_seed_dependent_output() {
    let outputs: Vec<Vec<f32>> = (0..16)
        .map(|seed| {
            run_selftest(
                &Emulator::new().with_seed(seed),
                SelfTest::MissingBarrier,
                &input(),
            )
            .unwrap()
        })
        .collect();
    let wrong = outputs
        .iter()
        .filter(|o| {
            o.iter()
                .zip(expected())
                .any(|(a, b)| a.to_bits() != b.to_bits())
        })
        .count();
    assert!(wrong > 0, "no seed exposed the missing __syncthreads");
    assert!(
        outputs.iter().flatten().any(|v| v.is_nan()),
        "the racing read should see poisoned shared memory"
    );
}

#[test]
fn read_before_cp_async_wait_sees_poison() {
    let out = run_selftest(&Emulator::new(), SelfTest::MissingWait, &input()).unwrap();
    assert!(
        out[..32].iter().any(|v| v.is_nan()),
        "data read before the wait must be poisoned: {out:?}"
    );
}

#[test]
fn divergent_shuffle_is_an_error_naming_both_sites() {
    let e = error_of(SelfTest::DivergentShuffle, 0);
    assert!(
        e.contains("divergent warp") && e.contains("gsdpa_selftest_divergent_shuffle"),
        "{e}"
    );
    assert!(
        e.contains("emu_selftest.cu:"),
        "the error names the source line: {e}"
    );
}

#[test]
fn exited_lanes_at_a_shuffle_are_an_error() {
    let e = error_of(SelfTest::ExitedLanes, 0);
    assert!(e.contains("already exited"), "{e}");
}

#[test]
fn mismatched_barriers_are_an_error() {
    let e = error_of(SelfTest::BarrierMismatch, 3);
    assert!(e.contains("different __syncthreads"), "{e}");
}

#[test]
fn misaligned_ldmatrix_is_an_error() {
    let e = error_of(SelfTest::MisalignedLdmatrix, 0);
    assert!(e.contains("not 16-byte aligned"), "{e}");
}

#[test]
fn out_of_bounds_store_is_an_error_not_a_crash() {
    let e = error_of(SelfTest::OutOfBounds, 0);
    assert!(
        e.contains("out-of-bounds") && e.contains("thread (63,0,0)"),
        "{e}"
    );
    // The process is fine afterwards: the next launch works.
    let out = run_selftest(&Emulator::new(), SelfTest::Correct, &input()).unwrap();
    assert_eq!(out, expected());
}
