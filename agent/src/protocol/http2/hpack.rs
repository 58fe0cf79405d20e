//! HPACK (RFC 7541): header block decoding for HTTP/2, one [`Decoder`] per
//! connection and direction.
//!
//! An observer differs from a real HTTP/2 endpoint in one way that matters
//! here: it may not have seen everything. The agent can attach to a
//! connection that has been open for hours, and a header block can fall in
//! bytes the kernel did not copy. Either way the dynamic table of the real
//! decoder holds entries this one never saw. This decoder keeps the entries
//! it did see, newest first, at the same indices the real decoder uses for
//! them, and reports a reference past them as an unknown field: never as an
//! error and never as some other entry's value.
//!
//! Why this is sound: both tables get every insertion at the front and lose
//! entries only at the back, so position `k` holds the same entry in both as
//! long as both still hold it. Whether this decoder evicts later than the
//! real one (entry sizes it cannot measure are counted low) or earlier (its
//! limit is a stand-in while the real one is unknown, or the real one is
//! larger than [`MAX_TABLE_SIZE`]), an index it still holds is right, and
//! one past its entries is reported unknown as long as entries it never saw
//! may exist. It knows they cannot once the real limit is known (from a
//! size update) and the entries it holds leave no room for another.

use std::collections::VecDeque;

#[path = "hpack_huffman.rs"]
mod huffman;

pub use huffman::{encode as huffman_encode, encoded_len as huffman_encoded_len};

/// Dynamic table size an HTTP/2 connection starts with
/// (SETTINGS_HEADER_TABLE_SIZE default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// Most bytes of dynamic table kept per decoder, whatever the peer allows.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// Bytes RFC 7541 adds to each entry's name and value length.
pub const ENTRY_OVERHEAD: usize = 32;
/// Continuation bytes accepted in one integer (enough for 2^32 - 1 with any
/// prefix).
const MAX_INT_CONTINUATIONS: usize = 5;

/// The static table (RFC 7541 Appendix A); index 1 is element 0.
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Why a header block cannot be decoded. After any of these the decoder's
/// dynamic table is no longer trusted (see [`Decoder::desync`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("HPACK header block ends inside a field representation")]
    Truncated,
    #[error("HPACK integer larger than 2^32 - 1 or with too many continuation bytes")]
    IntegerOverflow,
    #[error("HPACK indexed field with index 0")]
    ZeroIndex,
    #[error("HPACK Huffman-coded string decodes EOS")]
    HuffmanEos,
    #[error("HPACK Huffman-coded string has invalid padding")]
    HuffmanPadding,
    #[error("HPACK dynamic table size update above the SETTINGS_HEADER_TABLE_SIZE limit")]
    SizeUpdateTooLarge,
    #[error("HPACK dynamic table size update after the first header field of a block")]
    SizeUpdateLate,
}

impl From<huffman::HuffmanError> for HpackError {
    fn from(e: huffman::HuffmanError) -> Self {
        match e {
            huffman::HuffmanError::Eos => HpackError::HuffmanEos,
            huffman::HuffmanError::Padding => HpackError::HuffmanPadding,
        }
    }
}

/// One decoded header field. `None` is a part this decoder cannot know: it
/// sits in a dynamic table entry that was inserted before the agent was
/// watching, or in a header block that was not captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// What one decoded header block held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockSummary {
    /// Header fields in the block.
    pub fields: usize,
    /// Fields whose name or value is unknown.
    pub unknown: usize,
    /// A reference past the dynamic table while the decoder believed it
    /// knew the whole table: it was out of step after all (now it knows it).
    pub mismatch: bool,
}

/// Decodes an HPACK integer with an `prefix_bits`-bit prefix from the start
/// of `buf`: the value and the octets used.
pub fn decode_int(buf: &[u8], prefix_bits: u8) -> Result<(u32, usize), HpackError> {
    let mask = (1u32 << prefix_bits) - 1;
    let first = u32::from(*buf.first().ok_or(HpackError::Truncated)?) & mask;
    if first < mask {
        return Ok((first, 1));
    }
    let mut value = u64::from(mask);
    for i in 0..MAX_INT_CONTINUATIONS {
        let byte = *buf.get(1 + i).ok_or(HpackError::Truncated)?;
        value += u64::from(byte & 0x7f) << (7 * i);
        if value > u64::from(u32::MAX) {
            return Err(HpackError::IntegerOverflow);
        }
        if byte & 0x80 == 0 {
            return Ok((value as u32, i + 2));
        }
    }
    Err(HpackError::IntegerOverflow)
}

/// Encodes an HPACK integer with a `prefix_bits`-bit prefix; `first` holds
/// the representation's bits above the prefix.
pub fn encode_int(value: u32, prefix_bits: u8, first: u8, out: &mut Vec<u8>) {
    let mask = (1u32 << prefix_bits) - 1;
    if value < mask {
        out.push(first | value as u8);
        return;
    }
    out.push(first | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Encodes an HPACK string literal, Huffman-coded when asked.
pub fn encode_str(s: &[u8], huffman: bool, out: &mut Vec<u8>) {
    if huffman {
        encode_int(huffman_encoded_len(s) as u32, 7, 0x80, out);
        huffman_encode(s, out);
    } else {
        encode_int(s.len() as u32, 7, 0, out);
        out.extend_from_slice(s);
    }
}

/// One dynamic table entry.
#[derive(Debug, Clone)]
struct Entry {
    /// `None`: inserted with a name taken from an entry this decoder never saw.
    name: Option<Box<[u8]>>,
    value: Box<[u8]>,
    /// Size as RFC 7541 counts it; a lower bound when the name is unknown.
    size: usize,
}

/// Where a string literal's octets ended up.
#[derive(Clone, Copy)]
enum Str {
    /// Raw octets inside the block.
    Raw(usize, usize),
    /// Huffman-decoded into a scratch buffer.
    Decoded,
}

/// The HPACK decoder of one direction of one connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Entries, newest first (index 62 is `entries[0]`).
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes.
    size: usize,
    /// The table's size limit as this decoder applies it.
    max_size: usize,
    /// `max_size` is the real limit (not a stand-in while it is unknown).
    max_size_known: bool,
    /// The real limit is larger than [`MAX_TABLE_SIZE`]: entries are
    /// evicted here before the real decoder evicts them.
    capped: bool,
    /// The real table may hold entries older than every entry here.
    unknown_tail: bool,
    /// Largest size update the peer may send (from SETTINGS), if known.
    size_limit: Option<usize>,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder at the start of a connection: empty table, default size.
    pub fn new() -> Decoder {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            max_size_known: true,
            capped: false,
            unknown_tail: false,
            size_limit: Some(DEFAULT_TABLE_SIZE),
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// A decoder joining a connection already under way: nothing of the
    /// table or its size is known.
    pub fn mid_connection() -> Decoder {
        let mut d = Decoder::new();
        d.size_limit = None;
        d.desync();
        d
    }

    /// Forgets the dynamic table: a header block was lost, so an unknown
    /// number of entries were inserted (and the size may have changed).
    /// Later references to entries inserted from here on decode again.
    pub fn desync(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.max_size_known = false;
        self.max_size = self.stand_in_size();
        self.unknown_tail = true;
    }

    /// The limit applied while the real one is unknown: what the peer may
    /// use (encoders use all they may), or the default. Evicting earlier or
    /// later than the real decoder is safe here; this only bounds memory.
    fn stand_in_size(&self) -> usize {
        self.size_limit
            .unwrap_or(DEFAULT_TABLE_SIZE)
            .min(MAX_TABLE_SIZE)
    }

    /// Does this decoder know every entry of the real dynamic table?
    pub fn is_synchronised(&self) -> bool {
        !self.unknown_tail && !self.capped
    }

    /// Sets the largest table size the peer may choose (the
    /// SETTINGS_HEADER_TABLE_SIZE this decoder's side advertised, counting
    /// values not acknowledged yet); `None` when unknown.
    pub fn set_size_limit(&mut self, limit: Option<usize>) {
        self.size_limit = limit;
        if !self.max_size_known {
            self.max_size = self.stand_in_size();
            self.evict_to(self.max_size);
        }
    }

    /// Entries in the dynamic table as known here.
    pub fn table_len(&self) -> usize {
        self.entries.len()
    }

    /// Size of the dynamic table as counted here (RFC 7541 section 4.1).
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// The size limit applied to the dynamic table.
    pub fn max_table_size(&self) -> usize {
        self.max_size
    }

    /// Dynamic table entry `i` (0 is the newest): name (if known) and value.
    pub fn entry(&self, i: usize) -> Option<(Option<&[u8]>, &[u8])> {
        self.entries
            .get(i)
            .map(|e| (e.name.as_deref(), e.value.as_ref()))
    }

    /// Decodes one complete header block, calling `on_field` for each field
    /// in order. On error the fields before it have been reported and the
    /// table is forgotten ([`Decoder::desync`]).
    pub fn decode<F: FnMut(Field<'_>)>(
        &mut self,
        block: &[u8],
        mut on_field: F,
    ) -> Result<BlockSummary, HpackError> {
        let r = self.decode_inner(block, &mut on_field);
        if r.is_err() {
            self.desync();
        }
        r
    }

    fn decode_inner(
        &mut self,
        block: &[u8],
        on_field: &mut dyn FnMut(Field<'_>),
    ) -> Result<BlockSummary, HpackError> {
        let mut summary = BlockSummary::default();
        let mut pos = 0;
        while let Some(&b) = block.get(pos) {
            let rest = block.get(pos..).unwrap_or_default();
            if b & 0x80 != 0 {
                // Indexed field.
                let (index, n) = decode_int(rest, 7)?;
                pos += n;
                if index == 0 {
                    return Err(HpackError::ZeroIndex);
                }
                let field = self.lookup(index, &mut summary);
                summary.fields += 1;
                if field.name.is_none() || field.value.is_none() {
                    summary.unknown += 1;
                }
                let (name, value) = self.resolve(field);
                on_field(Field { name, value });
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update.
                let (size, n) = decode_int(rest, 5)?;
                pos += n;
                if summary.fields > 0 {
                    return Err(HpackError::SizeUpdateLate);
                }
                self.size_update(size as usize)?;
            } else {
                // Literal: with incremental indexing (01), without indexing
                // (0000) or never indexed (0001).
                let indexing = b & 0xc0 == 0x40;
                let prefix = if indexing { 6 } else { 4 };
                let (index, n) = decode_int(rest, prefix)?;
                pos += n;
                let name = if index == 0 {
                    Some(Src::Name(read_string(block, &mut pos, &mut self.name_buf)?))
                } else {
                    self.lookup(index, &mut summary).name
                };
                let value = read_string(block, &mut pos, &mut self.value_buf)?;
                summary.fields += 1;
                if name.is_none() {
                    summary.unknown += 1;
                }
                let field = Lookup {
                    name,
                    value: Some(Src::Value(value)),
                };
                let (name, value) = self.resolve_in(field, block);
                on_field(Field { name, value });
                if indexing {
                    let value = value.unwrap_or_default();
                    let entry = Entry {
                        size: name.map_or(0, <[u8]>::len) + value.len() + ENTRY_OVERHEAD,
                        name: name.map(Box::from),
                        value: Box::from(value),
                    };
                    self.insert(entry);
                }
            }
        }
        Ok(summary)
    }

    /// Where the parts of field `index` are, or `None` for unknown parts.
    fn lookup(&mut self, index: u32, summary: &mut BlockSummary) -> Lookup {
        let index = index as usize;
        if let Some(i) = index.checked_sub(1).filter(|&i| i < STATIC_TABLE.len()) {
            return Lookup {
                name: Some(Src::StaticName(i)),
                value: Some(Src::StaticValue(i)),
            };
        }
        let d = index - STATIC_TABLE.len() - 1;
        match self.entries.get(d) {
            Some(e) => Lookup {
                name: e.name.is_some().then_some(Src::EntryName(d)),
                value: Some(Src::EntryValue(d)),
            },
            None => {
                if self.is_synchronised() {
                    // The real table holds it, so this one was out of step.
                    summary.mismatch = true;
                    self.unknown_tail = true;
                }
                Lookup {
                    name: None,
                    value: None,
                }
            }
        }
    }

    fn resolve(&self, field: Lookup) -> (Option<&[u8]>, Option<&[u8]>) {
        self.resolve_in(field, &[])
    }

    fn resolve_in<'a>(
        &'a self,
        field: Lookup,
        block: &'a [u8],
    ) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
        let get = |src: Src| -> Option<&'a [u8]> {
            match src {
                Src::StaticName(i) => STATIC_TABLE.get(i).map(|(n, _)| n.as_bytes()),
                Src::StaticValue(i) => STATIC_TABLE.get(i).map(|(_, v)| v.as_bytes()),
                Src::EntryName(d) => self.entries.get(d).and_then(|e| e.name.as_deref()),
                Src::EntryValue(d) => self.entries.get(d).map(|e| e.value.as_ref()),
                Src::Name(Str::Raw(a, b)) | Src::Value(Str::Raw(a, b)) => block.get(a..b),
                Src::Name(Str::Decoded) => Some(&self.name_buf),
                Src::Value(Str::Decoded) => Some(&self.value_buf),
            }
        };
        (field.name.and_then(get), field.value.and_then(get))
    }

    fn size_update(&mut self, size: usize) -> Result<(), HpackError> {
        if self.size_limit.is_some_and(|limit| size > limit) {
            return Err(HpackError::SizeUpdateTooLarge);
        }
        self.capped = size > MAX_TABLE_SIZE;
        if self.capped {
            // Entries may go here before they go there.
            self.unknown_tail = true;
        }
        self.max_size = size.min(MAX_TABLE_SIZE);
        self.max_size_known = true;
        self.evict_to(self.max_size);
        self.check_complete();
        Ok(())
    }

    fn insert(&mut self, entry: Entry) {
        if entry.size > self.max_size {
            // RFC 7541 4.4: the table empties and the entry is not added.
            self.entries.clear();
            self.size = 0;
            if self.max_size_known && !self.capped {
                // The real entry is at least this large: the real table
                // emptied too.
                self.unknown_tail = false;
            }
            return;
        }
        self.evict_to(self.max_size - entry.size);
        self.size += entry.size;
        self.entries.push_front(entry);
        self.check_complete();
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    /// With the real limit known, a table too full to hold one more
    /// (smallest possible) entry leaves no room for entries never seen:
    /// the real table can only hold entries that are here.
    fn check_complete(&mut self) {
        if self.unknown_tail
            && self.max_size_known
            && !self.capped
            && self.size + ENTRY_OVERHEAD > self.max_size
        {
            self.unknown_tail = false;
        }
    }
}

/// Where a part of a field comes from, resolved to octets once decoding of
/// the field is done (so scratch buffers and the table can be borrowed).
#[derive(Clone, Copy)]
enum Src {
    StaticName(usize),
    StaticValue(usize),
    EntryName(usize),
    EntryValue(usize),
    Name(Str),
    Value(Str),
}

#[derive(Clone, Copy)]
struct Lookup {
    name: Option<Src>,
    value: Option<Src>,
}

/// Reads a string literal at `*pos`, Huffman-decoding into `buf` if coded.
fn read_string(block: &[u8], pos: &mut usize, buf: &mut Vec<u8>) -> Result<Str, HpackError> {
    let rest = block.get(*pos..).unwrap_or_default();
    let huffman = rest.first().is_some_and(|b| b & 0x80 != 0);
    let (len, n) = decode_int(rest, 7)?;
    let start = *pos + n;
    let end = start
        .checked_add(len as usize)
        .filter(|&e| e <= block.len())
        .ok_or(HpackError::Truncated)?;
    *pos = end;
    if huffman {
        buf.clear();
        huffman::decode(block.get(start..end).unwrap_or_default(), buf)?;
        Ok(Str::Decoded)
    } else {
        Ok(Str::Raw(start, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::test_reads::from_hex as hex;
    use crate::protocol::test_rng::Rng;

    fn text(b: Option<&[u8]>) -> String {
        b.map_or_else(
            || "?".to_owned(),
            |b| String::from_utf8_lossy(b).into_owned(),
        )
    }

    /// Decodes a block into "name: value" lines (`?` for unknown parts).
    fn decode(d: &mut Decoder, block: &[u8]) -> Result<Vec<String>, HpackError> {
        let mut out = Vec::new();
        d.decode(block, |f| {
            out.push(format!("{}: {}", text(f.name), text(f.value)));
        })?;
        Ok(out)
    }

    /// The dynamic table as "(s = size) name: value" lines, newest first.
    fn table(d: &Decoder) -> Vec<String> {
        d.entries
            .iter()
            .map(|e| {
                format!(
                    "(s = {}) {}: {}",
                    e.size,
                    text(e.name.as_deref()),
                    text(Some(&*e.value))
                )
            })
            .collect()
    }

    #[test]
    fn integer_examples_and_edges() {
        // RFC 7541 C.1.
        let mut out = Vec::new();
        encode_int(10, 5, 0, &mut out);
        assert_eq!(out, [0x0a]);
        out.clear();
        encode_int(1337, 5, 0, &mut out);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        out.clear();
        encode_int(42, 8, 0, &mut out);
        assert_eq!(out, [0x2a]);
        assert_eq!(decode_int(&[0x1f, 0x9a, 0x0a], 5), Ok((1337, 3)));
        assert_eq!(decode_int(&[0x2a], 8), Ok((42, 1)));
        // The prefix's top bits belong to the representation, not the value.
        assert_eq!(decode_int(&[0xea], 5), Ok((10, 1)));
        // A value of exactly 2^N - 1 needs a zero continuation byte.
        assert_eq!(decode_int(&[0x1f, 0x00], 5), Ok((31, 2)));
        assert_eq!(decode_int(&[0x1f], 5), Err(HpackError::Truncated));
        assert_eq!(decode_int(&[], 5), Err(HpackError::Truncated));
        assert_eq!(decode_int(&[0xff, 0x80], 7), Err(HpackError::Truncated));
        // u32::MAX fits; one more does not.
        for prefix in 1..=8u8 {
            for v in [
                0,
                1,
                30,
                31,
                127,
                128,
                255,
                256,
                16383,
                16384,
                u32::MAX - 1,
                u32::MAX,
            ] {
                let mut out = Vec::new();
                encode_int(v, prefix, 0, &mut out);
                assert_eq!(
                    decode_int(&out, prefix),
                    Ok((v, out.len())),
                    "{v} with {prefix}-bit prefix"
                );
            }
        }
        assert_eq!(
            decode_int(&[0x1f, 0xe1, 0xff, 0xff, 0xff, 0x0f], 5),
            Err(HpackError::IntegerOverflow)
        );
        // Non-minimal encodings with endless zero continuations stop.
        assert_eq!(
            decode_int(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], 5),
            Err(HpackError::IntegerOverflow)
        );
        assert_eq!(
            decode_int(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x00], 5),
            Ok((31, 6))
        );
    }

    #[test]
    fn c2_literal_fields() {
        let mut d = Decoder::new();
        let got = decode(
            &mut d,
            &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
        )
        .unwrap();
        assert_eq!(got, ["custom-key: custom-header"]);
        assert_eq!(table(&d), ["(s = 55) custom-key: custom-header"]);
        assert_eq!(d.table_size(), 55);

        let mut d = Decoder::new();
        let got = decode(&mut d, &hex("040c 2f73 616d 706c 652f 7061 7468")).unwrap();
        assert_eq!(got, [":path: /sample/path"]);
        assert_eq!(d.table_len(), 0);

        let mut d = Decoder::new();
        let got = decode(&mut d, &hex("1008 7061 7373 776f 7264 0673 6563 7265 74")).unwrap();
        assert_eq!(got, ["password: secret"]);
        assert_eq!(d.table_len(), 0);

        let mut d = Decoder::new();
        assert_eq!(decode(&mut d, &hex("82")).unwrap(), [":method: GET"]);
        assert_eq!(d.table_len(), 0);
    }

    const REQ1: [&str; 4] = [
        ":method: GET",
        ":scheme: http",
        ":path: /",
        ":authority: www.example.com",
    ];

    fn requests(blocks: [&str; 3]) {
        let mut d = Decoder::new();
        let got = decode(&mut d, &hex(blocks[0])).unwrap();
        assert_eq!(got, REQ1);
        assert_eq!(table(&d), ["(s = 57) :authority: www.example.com"]);
        assert_eq!(d.table_size(), 57);

        let got = decode(&mut d, &hex(blocks[1])).unwrap();
        let mut want = REQ1.to_vec();
        want.push("cache-control: no-cache");
        assert_eq!(got, want);
        assert_eq!(
            table(&d),
            [
                "(s = 53) cache-control: no-cache",
                "(s = 57) :authority: www.example.com"
            ]
        );
        assert_eq!(d.table_size(), 110);

        let got = decode(&mut d, &hex(blocks[2])).unwrap();
        assert_eq!(
            got,
            [
                ":method: GET",
                ":scheme: https",
                ":path: /index.html",
                ":authority: www.example.com",
                "custom-key: custom-value"
            ]
        );
        assert_eq!(
            table(&d),
            [
                "(s = 54) custom-key: custom-value",
                "(s = 53) cache-control: no-cache",
                "(s = 57) :authority: www.example.com"
            ]
        );
        assert_eq!(d.table_size(), 164);
        assert!(d.is_synchronised());
    }

    #[test]
    fn c3_requests_without_huffman() {
        requests([
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ]);
    }

    #[test]
    fn c4_requests_with_huffman() {
        requests([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    fn responses(blocks: [&str; 3]) {
        let mut d = Decoder::new();
        d.set_size_limit(Some(256));
        // The encoder chose 256 bytes; the examples leave the update out.
        d.size_update(256).unwrap();
        let got = decode(&mut d, &hex(blocks[0])).unwrap();
        assert_eq!(
            got,
            [
                ":status: 302",
                "cache-control: private",
                "date: Mon, 21 Oct 2013 20:13:21 GMT",
                "location: https://www.example.com"
            ]
        );
        assert_eq!(
            table(&d),
            [
                "(s = 63) location: https://www.example.com",
                "(s = 65) date: Mon, 21 Oct 2013 20:13:21 GMT",
                "(s = 52) cache-control: private",
                "(s = 42) :status: 302"
            ]
        );
        assert_eq!(d.table_size(), 222);

        let got = decode(&mut d, &hex(blocks[1])).unwrap();
        assert_eq!(
            got,
            [
                ":status: 307",
                "cache-control: private",
                "date: Mon, 21 Oct 2013 20:13:21 GMT",
                "location: https://www.example.com"
            ]
        );
        assert_eq!(
            table(&d),
            [
                "(s = 42) :status: 307",
                "(s = 63) location: https://www.example.com",
                "(s = 65) date: Mon, 21 Oct 2013 20:13:21 GMT",
                "(s = 52) cache-control: private"
            ]
        );
        assert_eq!(d.table_size(), 222);

        let got = decode(&mut d, &hex(blocks[2])).unwrap();
        assert_eq!(
            got,
            [
                ":status: 200",
                "cache-control: private",
                "date: Mon, 21 Oct 2013 20:13:22 GMT",
                "location: https://www.example.com",
                "content-encoding: gzip",
                "set-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
            ]
        );
        assert_eq!(
            table(&d),
            [
                "(s = 98) set-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
                "(s = 52) content-encoding: gzip",
                "(s = 65) date: Mon, 21 Oct 2013 20:13:22 GMT"
            ]
        );
        assert_eq!(d.table_size(), 215);
        assert!(d.is_synchronised());
    }

    #[test]
    fn c5_responses_without_huffman() {
        responses([
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
             3d31",
        ]);
    }

    #[test]
    fn c6_responses_with_huffman() {
        responses([
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ]);
    }

    #[test]
    fn size_updates() {
        let mut d = Decoder::new();
        decode(
            &mut d,
            &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        )
        .unwrap();
        assert_eq!(d.table_len(), 1);
        // Shrinking to 0 then back to 4096 empties the table.
        decode(&mut d, &hex("20 3fe1 1f 82")).unwrap();
        assert_eq!(d.table_len(), 0);
        assert_eq!(d.max_table_size(), 4096);
        // An update after a field is an error, and the table is forgotten.
        assert_eq!(
            decode(&mut d, &hex("82 20")),
            Err(HpackError::SizeUpdateLate)
        );
        assert!(!d.is_synchronised());
        // Above the SETTINGS limit.
        let mut d = Decoder::new();
        assert_eq!(
            decode(&mut d, &hex("3fe2 1f")),
            Err(HpackError::SizeUpdateTooLarge)
        );
        // Above MAX_TABLE_SIZE when the peer allowed it: capped, and what is
        // evicted early becomes unknown, not an error.
        let mut d = Decoder::new();
        d.set_size_limit(Some(1 << 20));
        let mut block = Vec::new();
        encode_int(1 << 20, 5, 0x20, &mut block);
        decode(&mut d, &block).unwrap();
        assert_eq!(d.max_table_size(), MAX_TABLE_SIZE);
        assert!(!d.is_synchronised());
    }

    #[test]
    fn eviction_on_insert_and_oversized_entry() {
        let mut d = Decoder::new();
        d.size_update(100).unwrap();
        let mut block = Vec::new();
        // 40 + 0 + 32 = 72 bytes: fits.
        block.push(0x40);
        encode_str(&[b'a'; 40], false, &mut block);
        encode_str(b"", false, &mut block);
        decode(&mut d, &block).unwrap();
        assert_eq!(d.table_size(), 72);
        // A second one evicts the first.
        block.clear();
        block.push(0x40);
        encode_str(&[b'b'; 40], false, &mut block);
        encode_str(b"", false, &mut block);
        decode(&mut d, &block).unwrap();
        assert_eq!(d.table_len(), 1);
        assert_eq!(d.entry(0).unwrap().0, Some(&[b'b'; 40][..]));
        // One larger than the table empties it.
        block.clear();
        block.push(0x40);
        encode_str(&[b'c'; 80], false, &mut block);
        encode_str(b"", false, &mut block);
        decode(&mut d, &block).unwrap();
        assert_eq!(d.table_len(), 0);
        assert_eq!(d.table_size(), 0);
        // The name of an entry can be the entry it evicts (RFC 7541 4.4).
        block.clear();
        block.push(0x40);
        encode_str(&[b'd'; 30], false, &mut block);
        encode_str(b"1", false, &mut block);
        block.push(0x7e); // name index 62, incremental indexing
        encode_str(b"2", false, &mut block);
        let got = decode(&mut d, &block).unwrap();
        assert_eq!(got[1], format!("{}: 2", "d".repeat(30)));
        assert_eq!(d.table_len(), 1);
        assert_eq!(d.entry(0).unwrap().1, b"2");
    }

    #[test]
    fn mid_connection_references_are_unknown() {
        let mut d = Decoder::mid_connection();
        assert!(!d.is_synchronised());
        // :method GET (static), a dynamic entry never seen (index 70), a
        // literal with incremental indexing, then a reference to it.
        let mut block = hex("82 c6");
        block.push(0x40);
        encode_str(b"x-new", false, &mut block);
        encode_str(b"v", true, &mut block);
        block.push(0xbe); // index 62: the entry just added
        block.push(0xbf); // index 63: never seen
        // Literal with a name from a never-seen entry, indexed.
        encode_int(70, 6, 0x40, &mut block);
        encode_str(b"w", false, &mut block);
        block.push(0xbe); // now index 62 is that entry: name unknown
        block.push(0xbf); // and 63 is x-new
        let got = decode(&mut d, &block).unwrap();
        assert_eq!(
            got,
            [
                ":method: GET",
                "?: ?",
                "x-new: v",
                "x-new: v",
                "?: ?",
                "?: w",
                "?: w",
                "x-new: v"
            ]
        );
        assert!(!d.is_synchronised());
        // A size update makes the limit known. With room left for more
        // entries, older unseen ones may still be there.
        let mut block = Vec::new();
        encode_int(200, 5, 0x20, &mut block);
        decode(&mut d, &block).unwrap();
        assert_eq!(d.table_len(), 2);
        assert!(!d.is_synchronised());
        // 71 bytes known (38, and at least 33) in a 100-byte table leave no
        // room for an unseen entry (32 bytes at least).
        block.clear();
        encode_int(100, 5, 0x20, &mut block);
        decode(&mut d, &block).unwrap();
        assert_eq!(d.table_len(), 2);
        assert!(d.is_synchronised());
        // Size 0 empties the table, which is then surely complete.
        let mut d = Decoder::mid_connection();
        decode(&mut d, &hex("20")).unwrap();
        assert!(d.is_synchronised());
    }

    #[test]
    fn stand_in_limit_evicts_early_and_reports_unknown() {
        // Joined mid-connection, with the real limit unknown: the table is
        // kept to the default size, and what it evicted is unknown.
        let mut d = Decoder::mid_connection();
        assert_eq!(d.max_table_size(), DEFAULT_TABLE_SIZE);
        let mut block = Vec::new();
        for i in 0..50 {
            block.push(0x40);
            encode_str(format!("x-{i:02}").as_bytes(), false, &mut block);
            encode_str(&[b'v'; 64], false, &mut block);
        }
        decode(&mut d, &block).unwrap();
        // 100 bytes per entry: 40 fit.
        assert_eq!(d.table_len(), 40);
        // x-49 is index 62, x-10 is index 101, x-09 (index 102) is gone.
        let got = decode(&mut d, &hex("be e5 e6")).unwrap();
        let v = "v".repeat(64);
        assert_eq!(
            got,
            [
                format!("x-49: {v}"),
                format!("x-10: {v}"),
                "?: ?".to_owned()
            ]
        );
        // A larger SETTINGS limit raises the stand-in.
        d.set_size_limit(Some(32 * 1024));
        assert_eq!(d.max_table_size(), 32 * 1024);
        assert!(!d.is_synchronised());
    }

    #[test]
    fn out_of_range_while_synchronised_is_a_mismatch() {
        let mut d = Decoder::new();
        let mut summary = None;
        let mut got = Vec::new();
        if let Ok(s) = d.decode(&hex("82 be"), |f| {
            got.push((f.name.is_some(), f.value.is_some()));
        }) {
            summary = Some(s);
        }
        assert_eq!(got, [(true, true), (false, false)]);
        assert_eq!(
            summary,
            Some(BlockSummary {
                fields: 2,
                unknown: 1,
                mismatch: true
            })
        );
        assert!(!d.is_synchronised());
    }

    #[test]
    fn malformed_blocks() {
        for (block, err) in [
            ("80", HpackError::ZeroIndex),
            ("40", HpackError::Truncated),
            ("4005 6162", HpackError::Truncated),
            ("0085 ff", HpackError::Truncated),
            ("0081 ff 00", HpackError::HuffmanPadding),
            ("00 84 ffffffff 00", HpackError::HuffmanEos),
            ("ff ffffffff 7f", HpackError::IntegerOverflow),
        ] {
            let mut d = Decoder::new();
            assert_eq!(decode(&mut d, &hex(block)), Err(err), "{block}");
            assert!(!d.is_synchronised(), "{block}");
        }
        // The empty block is fine.
        let mut d = Decoder::new();
        assert_eq!(decode(&mut d, &[]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x1234_5678);
        let mut d = Decoder::mid_connection();
        for round in 0..2000 {
            let block = rng.bytes(round % 64);
            let _ = d.decode(&block, |_| {});
            assert!(d.table_size() <= MAX_TABLE_SIZE);
        }
    }
}
