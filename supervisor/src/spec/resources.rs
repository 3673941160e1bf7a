//! cgroup limits from the caller's numbers: memory, CPU quota and weight, pids.

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use crate::error::{Error, Result};

use super::built;

/// Below this the container cannot start its runtime's init, let alone a program.
pub const MIN_MEMORY: i64 = 4 << 20;
/// The CFS period quotas are expressed in: 100ms, the kernel's default.
pub const CPU_PERIOD: u64 = 100_000;
/// The kernel refuses a quota under 1ms.
const MIN_QUOTA: i64 = 1_000;
/// cgroup v1's cpu.shares range.
const SHARES: std::ops::RangeInclusive<u64> = 2..=262_144;
/// More CPUs than any machine has; it only keeps the quota arithmetic finite.
const MAX_CPUS: f64 = 1_000_000.0;

/// Zero leaves a resource unlimited (and, for an update, as it is).
pub fn build(
    memory_limit: i64,
    cpus: f64,
    cpu_shares: u64,
    pids_limit: i64,
) -> Result<LinuxResources> {
    let mut r = LinuxResourcesBuilder::default();
    if memory_limit < 0 {
        return Err(Error::invalid(format!(
            "memory limit {memory_limit}: must not be negative"
        )));
    }
    if memory_limit > 0 {
        if memory_limit < MIN_MEMORY {
            return Err(Error::invalid(format!(
                "memory limit {memory_limit}: below the minimum of {MIN_MEMORY} bytes (4 MiB)"
            )));
        }
        r = r.memory(built(
            LinuxMemoryBuilder::default().limit(memory_limit).build(),
        )?);
    }

    if !cpus.is_finite() || cpus < 0.0 {
        return Err(Error::invalid(format!(
            "cpus {cpus}: must be a number of CPUs, 0 or more"
        )));
    }
    if cpus > MAX_CPUS {
        return Err(Error::invalid(format!("cpus {cpus}: too many")));
    }
    if cpu_shares != 0 && !SHARES.contains(&cpu_shares) {
        return Err(Error::invalid(format!(
            "cpu shares {cpu_shares}: must be from {} to {}",
            SHARES.start(),
            SHARES.end()
        )));
    }
    if cpus > 0.0 || cpu_shares > 0 {
        let mut cpu = LinuxCpuBuilder::default();
        if cpus > 0.0 {
            // In range: cpus is at most MAX_CPUS, so the product is far below i64::MAX.
            let quota = (cpus * CPU_PERIOD as f64).round() as i64;
            if quota < MIN_QUOTA {
                return Err(Error::invalid(format!(
                    "cpus {cpus}: below the minimum of 0.01"
                )));
            }
            cpu = cpu.quota(quota).period(CPU_PERIOD);
        }
        if cpu_shares > 0 {
            cpu = cpu.shares(cpu_shares);
        }
        r = r.cpu(built(cpu.build())?);
    }

    if pids_limit < 0 {
        return Err(Error::invalid(format!(
            "pids limit {pids_limit}: must not be negative"
        )));
    }
    if pids_limit > 0 {
        r = r.pids(built(
            LinuxPidsBuilder::default().limit(pids_limit).build(),
        )?);
    }
    built(r.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let r = build(256 << 20, 1.5, 512, 100).unwrap();
        assert_eq!(r.memory().unwrap().limit(), Some(256 << 20));
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(150_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(r.pids().unwrap().limit(), 100);

        let none = build(0, 0.0, 0, 0).unwrap();
        assert!(none.memory().is_none() && none.cpu().is_none() && none.pids().is_none());
        assert!(none.devices().is_none());

        let small = build(0, 0.01, 0, 0).unwrap();
        assert_eq!(small.cpu().as_ref().unwrap().quota(), Some(1_000));
        assert!(small.cpu().as_ref().unwrap().shares().is_none());
    }

    #[test]
    fn bad_limits() {
        for (mem, cpus, shares, pids) in [
            (-1, 0.0, 0, 0),
            (1 << 20, 0.0, 0, 0),
            (0, -0.5, 0, 0),
            (0, f64::NAN, 0, 0),
            (0, f64::INFINITY, 0, 0),
            (0, 0.001, 0, 0),
            (0, 2e6, 0, 0),
            (0, 0.0, 1, 0),
            (0, 0.0, 262_145, 0),
            (0, 0.0, 0, -1),
        ] {
            let err = build(mem, cpus, shares, pids).unwrap_err();
            assert!(
                matches!(err, Error::InvalidArgument(_)),
                "{mem} {cpus} {shares} {pids}"
            );
        }
        assert_eq!(
            build(1 << 20, 0.0, 0, 0).unwrap_err().to_string(),
            "memory limit 1048576: below the minimum of 4194304 bytes (4 MiB)"
        );
    }
}
