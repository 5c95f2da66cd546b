//! GUIDs as Microsoft stores them (first three fields little-endian) and as `uuid` holds them.

use uuid::Uuid;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A GUID in Microsoft's mixed-endian on-disk layout (`Data1` LE u32, `Data2`/`Data3` LE u16,
/// `Data4` bytes), as VHDX and Windows-written structures store it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct MsGuid(pub [u8; 16]);

const _: () = assert!(size_of::<MsGuid>() == 16);

impl MsGuid {
    /// The all-zero GUID.
    pub const NIL: MsGuid = MsGuid([0; 16]);

    /// As a `Uuid` (so it prints in the usual `xxxxxxxx-xxxx-...` form).
    pub fn to_uuid(self) -> Uuid {
        Uuid::from_bytes_le(self.0)
    }

    /// From a `Uuid`.
    pub fn from_uuid(uuid: Uuid) -> Self {
        MsGuid(uuid.to_bytes_le())
    }

    /// Whether every byte is zero.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl std::fmt::Debug for MsGuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_uuid())
    }
}

impl std::fmt::Display for MsGuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_uuid())
    }
}

/// A fresh random (version 4) UUID.
pub fn new_uuid() -> Uuid {
    Uuid::new_v4()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_endian_round_trip() {
        let u: Uuid = "00112233-4455-6677-8899-aabbccddeeff".parse().unwrap();
        let g = MsGuid::from_uuid(u);
        assert_eq!(g.0[..8], [0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66]);
        assert_eq!(g.0[8..], [0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
        assert_eq!(g.to_uuid(), u);
        assert_eq!(g.to_string(), "00112233-4455-6677-8899-aabbccddeeff");
        assert!(MsGuid::NIL.is_nil() && !g.is_nil());
        assert_ne!(new_uuid(), new_uuid());
    }
}
