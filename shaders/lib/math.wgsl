// Portable, accurate elementary functions. Vulkan only promises 2^-11
// absolute error for sin/cos on [-pi, pi] (and nothing outside), and tanh may
// overflow through sinh/cosh; RoPE angles reach 1e5 rad. These stay within
// ~2e-7 of the true value for |x| < 2e5 on any conforming driver.

// Returns vec2(sin(x), cos(x)).
fn sincos(x: f32) -> vec2<f32> {
    // x - n*2pi, Cody-Waite with 2pi = C1 + C2A + C2B: C1 has 8 significant
    // bits and C2A 9, so n*C1 and n*C2A are exact for |n| < 2^15 and the
    // subtractions are exact by Sterbenz's lemma.
    let n = round(x * 0.15915493667125702);
    var r = x - n * 6.28125;
    r = r - n * 0.001934051513671875;
    r = r - n * 1.2556658930407139e-06;
    // quadrant j, t in [-pi/4, pi/4]
    let j = round(r * 0.6366197466850281);
    var t = r - j * 1.5707963705062866;
    t = t - j * -4.371138828673793e-08;
    // cephes sinf/cosf minimax polynomials
    let z = t * t;
    let s = t + t * z * ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1);
    let c = 1.0 - 0.5 * z + z * z * ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2);
    let q = u32(i32(j) & 3);
    switch q {
        case 0u: { return vec2<f32>(s, c); }
        case 1u: { return vec2<f32>(c, -s); }
        case 2u: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}

// tanh without overflow: sign(x) * (1 - e) / (1 + e), e = exp(-2|x|).
fn tanh_safe(x: f32) -> f32 {
    let e = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - e) / (1.0 + e);
}

// PyTorch gelu(approximate='tanh'): 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3),
// evaluated as x * sigmoid(2u) (the same function): no cancellation in
// 1 + tanh(u) for negative x, no overflow for large |x|.
fn gelu_tanh(x: f32) -> f32 {
    let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    return x / (1.0 + exp(-2.0 * u));
}

// x * sigmoid(x)
fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}
