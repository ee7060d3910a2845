// float16.cpp: IEEE binary16 conversions for the emulator's f16 type (bf16 is inline in emu.h).
// Round to nearest even, overflow to infinity, subnormals kept, NaN stays NaN.
#include "emu.h"

namespace gsdpa_emu {

f16 f16::from_float(float value) {
    uint32_t x;
    std::memcpy(&x, &value, 4);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t abs = x & 0x7fffffffu;
    if (abs > 0x7f800000u) return f16{uint16_t(sign | 0x7e00u | ((abs >> 13) & 0x3ffu))};  // NaN
    if (abs >= 0x477ff000u) return f16{uint16_t(sign | 0x7c00u)};  // >= 65520 rounds to infinity
    if (abs < 0x38800000u) {
        // Below 2^-14: a subnormal half, in units of 2^-24. Scaling by 2^24 is exact; rint rounds to even.
        float magnitude;
        std::memcpy(&magnitude, &abs, 4);
        return f16{uint16_t(sign | static_cast<uint16_t>(std::rint(magnitude * 16777216.0f)))};
    }
    // Normal: rebias the exponent (127 -> 15) and round the mantissa from 23 to 10 bits, ties to even.
    const uint32_t rounded = abs - 0x38000000u + 0xfffu + ((abs >> 13) & 1u);
    return f16{uint16_t(sign | (rounded >> 13))};
}

float f16::to_float() const {
    const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
    const uint32_t exponent = (bits >> 10) & 0x1fu;
    const uint32_t mantissa = bits & 0x3ffu;
    uint32_t out;
    if (exponent == 0x1f) {
        out = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {
        out = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else {
        // Zero or subnormal: mantissa * 2^-24, exact in f32.
        float f = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
        std::memcpy(&out, &f, 4);
        out |= sign;
    }
    float f;
    std::memcpy(&f, &out, 4);
    return f;
}

}  // namespace gsdpa_emu
