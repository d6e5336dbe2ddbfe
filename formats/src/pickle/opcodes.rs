//! Pickle opcodes by name, shared by the reader's dispatch and the writer's output so neither
//! spells raw bytes. Names follow CPython's `pickletools`.
use std::fmt;

/// Declares the enum and its byte decoding from one table, so the two cannot drift apart.
macro_rules! opcodes {
    ($($(#[$doc:meta])* $name:ident = $byte:literal,)*) => {
        /// Every opcode of protocols 0 to 5. The reader handles or explicitly refuses each one;
        /// any other byte is corrupt input.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub(super) enum OpCode {
            $($(#[$doc])* $name = $byte,)*
        }

        impl TryFrom<u8> for OpCode {
            type Error = UnknownOpCode;
            fn try_from(byte: u8) -> Result<Self, UnknownOpCode> {
                match byte {
                    $($byte => Ok(OpCode::$name),)*
                    other => Err(UnknownOpCode(other)),
                }
            }
        }
    };
}

opcodes! {
    // Protocol 0 and 1.
    Mark = b'(',
    Stop = b'.',
    Pop = b'0',
    PopMark = b'1',
    Dup = b'2',
    /// Text float.
    Float = b'F',
    /// Text int (`00`/`01` are booleans).
    Int = b'I',
    BinInt = b'J',
    BinInt1 = b'K',
    /// Text long with a trailing `L`.
    Long = b'L',
    BinInt2 = b'M',
    None = b'N',
    /// Text persistent id: `torch.save` never writes it.
    PersId = b'P',
    BinPersId = b'Q',
    Reduce = b'R',
    /// Quoted text string.
    String = b'S',
    BinString = b'T',
    ShortBinString = b'U',
    /// Raw-unicode-escaped text string.
    Unicode = b'V',
    BinUnicode = b'X',
    Append = b'a',
    Build = b'b',
    Global = b'c',
    Dict = b'd',
    EmptyDict = b'}',
    Appends = b'e',
    Get = b'g',
    BinGet = b'h',
    /// Old-style class instance: refused.
    Inst = b'i',
    LongBinGet = b'j',
    List = b'l',
    EmptyList = b']',
    /// Old-style class instance: refused.
    Obj = b'o',
    Put = b'p',
    BinPut = b'q',
    LongBinPut = b'r',
    SetItem = b's',
    Tuple = b't',
    EmptyTuple = b')',
    SetItems = b'u',
    /// Big-endian f64.
    BinFloat = b'G',
    // Protocol 2.
    Proto = 0x80,
    NewObj = 0x81,
    /// Extension registry codes: refused.
    Ext1 = 0x82,
    Ext2 = 0x83,
    Ext4 = 0x84,
    Tuple1 = 0x85,
    Tuple2 = 0x86,
    Tuple3 = 0x87,
    NewTrue = 0x88,
    NewFalse = 0x89,
    /// Little-endian two's-complement int, 1-byte length.
    Long1 = 0x8a,
    Long4 = 0x8b,
    // Protocol 3.
    BinBytes = b'B',
    ShortBinBytes = b'C',
    // Protocol 4.
    ShortBinUnicode = 0x8c,
    BinUnicode8 = 0x8d,
    BinBytes8 = 0x8e,
    EmptySet = 0x8f,
    AddItems = 0x90,
    FrozenSet = 0x91,
    NewObjEx = 0x92,
    StackGlobal = 0x93,
    Memoize = 0x94,
    /// A length hint only.
    Frame = 0x95,
    // Protocol 5.
    ByteArray8 = 0x96,
    /// Out-of-band buffers: refused.
    NextBuffer = 0x97,
    ReadonlyBuffer = 0x98,
}

/// A byte that is no pickle opcode. The unpickler adds where it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct UnknownOpCode(pub u8);

impl fmt::Display for UnknownOpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown opcode 0x{:02x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_decodes_to_itself_or_is_unknown() {
        let mut known = 0;
        for byte in 0..=255u8 {
            match OpCode::try_from(byte) {
                Ok(op) => {
                    assert_eq!(op as u8, byte);
                    known += 1;
                }
                Err(e) => assert_eq!(e.to_string(), format!("unknown opcode 0x{byte:02x}")),
            }
        }
        // pickletools lists 68 opcodes for protocols 0 to 5.
        assert_eq!(known, 68);
    }
}
