//! `Element::from_f64` rounds an f64 to the 16-bit types correctly (nearest, ties to even), with no
//! double rounding through f32: the CPU reference rounds its f64 results with it, and the CLI its
//! float64 inputs.

use gated_sdpa::Element;
use half::{bf16, f16};
use rand::{rngs::StdRng, RngExt, SeedableRng};

/// Checks that `r` is a nearest 16-bit value to `x`, ties going to the even one, by comparing with
/// both neighbours of `r` (exact in f64).
fn assert_nearest<T: Element>(x: f64, r: T, next_up: impl Fn(T) -> T, next_down: impl Fn(T) -> T) {
    let (rv, up, down) = (r.to_f64(), next_up(r).to_f64(), next_down(r).to_f64());
    let d = (x - rv).abs();
    assert!(
        d <= (x - up).abs() && d <= (x - down).abs(),
        "{x:e} rounded to {rv:e}"
    );
}

fn bits_bf16(x: bf16) -> u16 {
    x.to_bits()
}

#[test]
fn bf16_from_f64_does_not_round_twice() {
    let one = 1.0f64;
    // Exactly the midpoint between 1 and 1 + 2^-7: ties to even (1.0); just below: down; just above
    // (by less than f32 resolves, so a conversion through f32 would see the midpoint and tie down): up.
    assert_eq!(<bf16 as Element>::from_f64(one + 2f64.powi(-8)), bf16::ONE);
    assert_eq!(
        <bf16 as Element>::from_f64(one + 2f64.powi(-8) - 2f64.powi(-40)),
        bf16::ONE
    );
    assert_eq!(
        <bf16 as Element>::from_f64(one + 2f64.powi(-8) + 2f64.powi(-30)),
        bf16::from_f32(1.0 + 2f32.powi(-7))
    );
    assert!(<bf16 as Element>::from_f64(f64::NAN).is_nan());
    assert_eq!(<bf16 as Element>::from_f64(f64::INFINITY), bf16::INFINITY);
    assert_eq!(<bf16 as Element>::from_f64(1e300), bf16::INFINITY);
}

#[test]
fn f16_from_f64_does_not_round_twice() {
    let one = 1.0f64;
    assert_eq!(
        <f16 as Element>::from_f64(one + 2f64.powi(-11) + 2f64.powi(-40)),
        f16::from_f32(1.0 + 2f32.powi(-10))
    );
    assert_eq!(<f16 as Element>::from_f64(one + 2f64.powi(-11)), f16::ONE);
    assert_eq!(<f16 as Element>::from_f64(1e6), f16::INFINITY);
    // A value below f16's smallest subnormal's half rounds to zero.
    assert_eq!(<f16 as Element>::from_f64(2f64.powi(-26)), f16::ZERO);
}

#[test]
fn from_f64_is_nearest_on_random_values() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..20_000 {
        // Magnitudes away from zero, so that both neighbours of the result are finite numbers.
        let magnitude: f64 = rng.random_range(1e-3..300.0);
        let x = if rng.random_range(0..2) == 0 {
            magnitude
        } else {
            -magnitude
        };
        let b = <bf16 as Element>::from_f64(x);
        assert_nearest(
            x,
            b,
            |r| bf16::from_bits(bits_bf16(r) + 1),
            |r| bf16::from_bits(bits_bf16(r) - 1),
        );
        let h = <f16 as Element>::from_f64(x);
        assert_nearest(
            x,
            h,
            |r| f16::from_bits(r.to_bits() + 1),
            |r| f16::from_bits(r.to_bits() - 1),
        );
    }
}
