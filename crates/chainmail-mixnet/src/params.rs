//! Network parameters and the anonymity presets.

use std::time::Duration;

use chainmail_packet::Epoch;
use serde::{Deserialize, Serialize};

use crate::Time;

/// How much cover traffic and delay a network uses: the trade between
/// bandwidth, latency and anonymity (the "adaptable anonymity" knob).
///
/// | preset | client packets/s (λP + λL + λD) | client upstream | mean delay per hop | typical wait to send | mix loops/s |
/// |---|---|---|---|---|---|
/// | low-bandwidth | 0.5 + 0.1 + 0.1 = 0.7 | 1.4 KB/s | 50 ms | 1.4 s | 0.2 |
/// | standard | 1.65 + 0.15 + 0.1 = 1.9 | 3.9 KB/s | 25 ms | 0.42 s (median) | 1 |
/// | strong | 3 + 1 + 1 = 5 | 10.2 KB/s | 150 ms | 0.23 s (median) | 4 |
///
/// Upstream counts 2048-byte packets only. A real message waits for the
/// next tick of the λP stream (exponential, median ln 2 / λP) and then
/// spends the sum of four exponential per-hop delays in transit. More cover
/// (higher λ) and longer delays make the mixes' output harder to link to
/// their input; they cost bandwidth and latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// For metered or mobile links: little cover, slower sending.
    LowBandwidth,
    /// The default: under 4 KB/s idle upstream, sub-second typical latency.
    Standard,
    /// More cover and longer delays, for users who can afford bandwidth.
    Strong,
}

impl Preset {
    /// The traffic rates of this preset.
    pub fn rates(self) -> TrafficRates {
        match self {
            Preset::LowBandwidth => TrafficRates {
                payload_per_s: 0.5,
                loop_per_s: 0.1,
                drop_per_s: 0.1,
                mix_loop_per_s: 0.2,
                mean_delay_ms: 50.0,
            },
            Preset::Standard => TrafficRates {
                payload_per_s: 1.65,
                loop_per_s: 0.15,
                drop_per_s: 0.1,
                mix_loop_per_s: 1.0,
                mean_delay_ms: 25.0,
            },
            Preset::Strong => TrafficRates {
                payload_per_s: 3.0,
                loop_per_s: 1.0,
                drop_per_s: 1.0,
                mix_loop_per_s: 4.0,
                mean_delay_ms: 150.0,
            },
        }
    }

    /// All presets, for reports.
    pub const ALL: [Preset; 3] = [Preset::LowBandwidth, Preset::Standard, Preset::Strong];

    /// The name in network files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::LowBandwidth => "low-bandwidth",
            Preset::Standard => "standard",
            Preset::Strong => "strong",
        }
    }

    /// The preset whose rates these are exactly, if any.
    pub fn of_rates(rates: &TrafficRates) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.rates() == *rates)
    }

    /// How well this preset hid a message's sender in simulation: the
    /// real cores, 10,000 clients, 10 providers, 3 layers of 8 mixes, an
    /// observer of every link (`chainmail_sim::anonymity`; the figures
    /// and the command that measured them are in BENCHMARKS.md,
    /// "Anonymity").
    pub fn measured_anonymity(self) -> MeasuredAnonymity {
        let (bits, corrupt_bits) = match self {
            Preset::LowBandwidth => (LOW_BANDWIDTH_BITS, LOW_BANDWIDTH_CORRUPT_BITS),
            Preset::Standard => (STANDARD_BITS, STANDARD_CORRUPT_BITS),
            Preset::Strong => (STRONG_BITS, STRONG_CORRUPT_BITS),
        };
        MeasuredAnonymity {
            clients: 10_000,
            mean_bits: bits,
            corrupt_mean_bits: corrupt_bits,
        }
    }
}

// Measured by `cargo bench -p chainmail-sim --bench anonymity -- --clients
// 10000` (BENCHMARKS.md, "Anonymity"): mean entropy of a message's sender,
// all mixes honest and 5 of the 24 mixes (20 %) corrupt. The ideal is
// log2 10,000 = 13.29 bits.
const LOW_BANDWIDTH_BITS: f64 = 11.11;
const LOW_BANDWIDTH_CORRUPT_BITS: f64 = 10.98;
const STANDARD_BITS: f64 = 11.51;
const STANDARD_CORRUPT_BITS: f64 = 11.39;
const STRONG_BITS: f64 = 13.13;
const STRONG_CORRUPT_BITS: f64 = 13.11;

/// A preset's sender anonymity as measured in simulation
/// ([`Preset::measured_anonymity`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeasuredAnonymity {
    /// Clients in the simulated network.
    pub clients: u32,
    /// Mean entropy of a message's sender, bits, all mixes honest.
    pub mean_bits: f64,
    /// The same with 20 % of the mixes corrupt.
    pub corrupt_mean_bits: f64,
}

impl MeasuredAnonymity {
    /// The effective anonymity set, 2^H.
    pub fn anonymity_set(&self) -> f64 {
        self.mean_bits.exp2()
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        format!(
            "a message's sender hides among about {:.0} of {} clients (H = {:.1} bits; {:.1} bits with 20 % of mixes corrupt), measured in simulation against an observer of every link",
            self.anonymity_set(),
            self.clients,
            self.mean_bits,
            self.corrupt_mean_bits
        )
    }
}

/// Poisson rates (events per second) and the mean per-hop delay.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficRates {
    /// λP: the client's payload stream; a real packet if one is queued,
    /// otherwise drop cover.
    pub payload_per_s: f64,
    /// λL: client loop cover, through the network back to its own mailbox.
    pub loop_per_s: f64,
    /// λD: client drop cover, to a random provider that discards it.
    pub drop_per_s: f64,
    /// Mix loop cover, sent by every mix through the layers back to itself.
    pub mix_loop_per_s: f64,
    /// Mean of the exponential per-hop delay, milliseconds.
    pub mean_delay_ms: f64,
}

/// A sender draws each per-hop delay from the exponential distribution,
/// cut at this many times the mean; a mix refuses a packet asking for
/// more. Cutting there changes one draw in 22,000 (e^-10), and bounds how
/// long anyone can make a mix hold a packet (a delay queue filled with
/// packets held for weeks would starve everyone else).
pub const MAX_DELAY_FACTOR: f64 = 10.0;

impl TrafficRates {
    /// The longest per-hop delay a mix accepts, in ms
    /// ([`MAX_DELAY_FACTOR`] times the mean, at least 1).
    pub fn max_delay_ms(&self) -> u32 {
        (self.mean_delay_ms * MAX_DELAY_FACTOR)
            .ceil()
            .clamp(1.0, f64::from(u32::MAX)) as u32
    }

    /// What `status` says of these rates: the preset they are and its
    /// measured anonymity, or that custom rates were not measured.
    pub fn anonymity_line(&self) -> String {
        match Preset::of_rates(self) {
            Some(p) => format!("preset {}: {}", p.name(), p.measured_anonymity().describe()),
            None => "custom traffic rates (not a preset): their anonymity was not measured".into(),
        }
    }

    /// Packets per second a client sends when it has nothing to say.
    pub fn client_packets_per_s(&self) -> f64 {
        self.payload_per_s + self.loop_per_s + self.drop_per_s
    }

    /// Checks that every rate is a finite, non-negative number and that the
    /// payload stream exists.
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("payload rate", self.payload_per_s),
            ("loop rate", self.loop_per_s),
            ("drop rate", self.drop_per_s),
            ("mix loop rate", self.mix_loop_per_s),
            ("mean delay", self.mean_delay_ms),
        ];
        for (name, v) in all {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} must be a non-negative number, got {v}"));
            }
        }
        if self.payload_per_s <= 0.0 {
            return Err("payload rate must be above zero, or no message is ever sent".into());
        }
        Ok(())
    }
}

/// Parameters every node and client of one network agree on (they come from
/// the network file).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Length of a mix-key epoch.
    pub epoch_length: Duration,
    /// How long a key stays usable after its epoch ended, for packets in
    /// flight and clocks that differ a little.
    pub key_grace: Duration,
    /// Number of mix layers (Loopix uses 3).
    pub layers: usize,
    /// At most this many mixes per layer are active in an epoch.
    pub layer_width_cap: usize,
    /// Traffic rates and delays.
    pub rates: TrafficRates,
    /// How long providers keep a mailbox packet.
    pub mailbox_ttl: Duration,
    /// Per-mailbox quota: items.
    pub mailbox_max_items: u64,
    /// Per-mailbox quota: bytes.
    pub mailbox_max_bytes: u64,
    /// How long a node descriptor is valid after it is issued.
    pub descriptor_lifetime: Duration,
}

impl Params {
    /// Defaults with the given preset: one-hour epochs, three layers.
    pub fn with_preset(preset: Preset) -> Self {
        Params {
            epoch_length: Duration::from_secs(3600),
            key_grace: Duration::from_secs(600),
            layers: 3,
            layer_width_cap: 64,
            rates: preset.rates(),
            mailbox_ttl: Duration::from_secs(7 * 24 * 3600),
            mailbox_max_items: 10_000,
            mailbox_max_bytes: 32 * 1024 * 1024,
            descriptor_lifetime: Duration::from_secs(3 * 3600),
        }
    }

    /// The epoch that contains `now`. Epochs are counted from the Unix epoch
    /// so that every node computes the same number without talking.
    pub fn epoch_at(&self, now: Time) -> Epoch {
        let len = self.epoch_length.as_millis().max(1) as u64;
        Epoch(u32::try_from(now.as_millis() / len).unwrap_or(u32::MAX))
    }

    /// When `epoch` starts.
    pub fn epoch_start(&self, epoch: Epoch) -> Time {
        Time(u64::from(epoch.0) * self.epoch_length.as_millis().max(1) as u64)
    }

    /// Checks the parameters for values that would break the network.
    pub fn validate(&self) -> Result<(), String> {
        self.rates.validate()?;
        if self.epoch_length < Duration::from_secs(10) {
            return Err("epoch length must be at least 10 s".into());
        }
        if self.key_grace > self.epoch_length {
            return Err("key grace must not be longer than an epoch".into());
        }
        if self.layers == 0 || self.layers > chainmail_packet::MAX_HOPS - 2 {
            return Err(format!(
                "layers must be 1 to {} (a route is provider, layers, provider)",
                chainmail_packet::MAX_HOPS - 2
            ));
        }
        if self.layer_width_cap == 0 {
            return Err("layer width cap must be at least 1".into());
        }
        if self.descriptor_lifetime < self.epoch_length {
            return Err("descriptors must live at least one epoch".into());
        }
        Ok(())
    }
}

impl Default for Params {
    fn default() -> Self {
        Self::with_preset(Preset::Standard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_preset_meets_the_idle_upstream_target() {
        let bytes_per_s =
            Preset::Standard.rates().client_packets_per_s() * chainmail_packet::PACKET_SIZE as f64;
        assert!(bytes_per_s <= 4000.0, "{bytes_per_s} B/s");
    }

    #[test]
    fn status_names_the_preset_and_its_measured_anonymity() {
        let line = Preset::Standard.rates().anonymity_line();
        assert!(line.starts_with("preset standard: "), "{line}");
        assert!(line.contains("about 2916 of 10000 clients"), "{line}");
        assert!(line.contains("H = 11.5 bits"), "{line}");
        for p in Preset::ALL {
            let m = p.measured_anonymity();
            assert!(m.mean_bits.is_finite() && m.mean_bits <= 10_000f64.log2());
            assert!(m.corrupt_mean_bits <= m.mean_bits);
        }
        let mut custom = Preset::Standard.rates();
        custom.mean_delay_ms = 40.0;
        assert!(custom.anonymity_line().starts_with("custom traffic rates"));
    }

    #[test]
    fn presets_and_defaults_validate() {
        for p in Preset::ALL {
            Params::with_preset(p).validate().unwrap();
        }
    }

    #[test]
    fn epochs_are_computed_from_the_clock() {
        let p = Params::default();
        assert_eq!(p.epoch_at(Time(0)), Epoch(0));
        assert_eq!(p.epoch_at(Time(3_600_000 * 5 + 1)), Epoch(5));
        assert_eq!(p.epoch_start(Epoch(5)), Time(3_600_000 * 5));
    }
}
