// Exponential backoff with jitter, a pure function of the attempt number and a random source,
// so it is unit-tested without sleeping.

public struct Backoff: Sendable, Equatable {
    public var initial: Double
    public var maximum: Double
    public var multiplier: Double

    public init(initial: Double, maximum: Double, multiplier: Double = 2) {
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
    }

    /// The ceiling for `attempt` (0-based): initial × multiplier^attempt, capped.
    public func ceiling(attempt: Int) -> Double {
        var value = initial
        var n = 0
        while n < attempt && value < maximum {
            value *= multiplier
            n += 1
        }
        return min(value, maximum)
    }

    /// "Full jitter": uniformly in [0, ceiling]. `unit` is a random number in [0, 1).
    public func fullJitter(attempt: Int, unit: Double) -> Double {
        ceiling(attempt: attempt) * unit
    }

    /// Half jitter: in [ceiling/2, ceiling], so the delay still grows visibly.
    public func delay(attempt: Int, unit: Double) -> Double {
        let c = ceiling(attempt: attempt)
        return c / 2 + c / 2 * unit
    }
}

/// Jitter's random source: SplitMix64 seeded once from the system. `SystemRandomNumberGenerator`
/// makes a getrandom(2) system call per number, and the worker draws one per answered request
/// (measured: 1.0 getrandom per published change, a fifth of the worker's system calls). Jitter
/// needs spread, not secrecy.
public struct JitterRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64 = UInt64.random(in: .min ... .max)) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
