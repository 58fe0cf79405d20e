//! Field offsets of the kernel structures the probes walk, read from the
//! running kernel's BTF (/sys/kernel/btf/vmlinux).
//!
//! Only what the probes need: struct member lookup by name, descending into
//! anonymous structs and unions, as the kernel nests many fields in them.

use std::collections::HashMap;

use sonde_common::KernelOffsets;

/// Why offsets could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

#[derive(Clone, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name: u32,
    kind: u32,
    /// Referenced type for modifiers and typedefs.
    type_id: u32,
    members: Vec<Member>,
}

/// The parts of a BTF blob that member lookup needs.
pub struct Btf {
    strings: Vec<u8>,
    /// Indexed by type id; id 0 is `void`.
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.into(),
            source,
        })?;
        Btf::parse(&data)
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let magic = data.get(0..2).ok_or(BtfError::Malformed("no header"))?;
        if magic != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_bytes = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let mut types = vec![Type {
            name: 0,
            kind: 0,
            type_id: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < types_bytes.len() {
            let name = u32_at(types_bytes, at)?;
            let info = u32_at(types_bytes, at + 4)?;
            let size_or_type = u32_at(types_bytes, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4, // int, var, decl_tag
                3 => 12,          // array
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(types_bytes, m + 8)?;
                        members.push(Member {
                            name: u32_at(types_bytes, m)?,
                            type_id: u32_at(types_bytes, m + 4)?,
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,   // enum, func_proto
                15 | 19 => vlen * 12, // datasec, enum64
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            at += extra;
            types.push(Type {
                name,
                kind,
                type_id: size_or_type,
                members,
            });
        }

        let mut btf = Btf {
            strings,
            types,
            structs_by_name: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && ty.name != 0 {
                let name = btf.string(ty.name).to_owned();
                // Keep the first full definition: forward declarations are another kind.
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.type_id;
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Bit offset of `member` inside the struct or union `ty`, looking into
    /// anonymous members.
    fn find_member(&self, ty: &Type, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in &ty.members {
            if m.name != 0 {
                if self.string(m.name) == member {
                    return Some(m.bit_offset);
                }
                continue;
            }
            let inner = self.resolve(m.type_id)?;
            if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(off) = self.find_member(inner, member, depth + 1)
            {
                return Some(m.bit_offset + off);
            }
        }
        None
    }

    /// Byte offset of `member` in `struct strukt`.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let ty = &self.types[*id as usize];
        self.find_member(ty, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.into(),
                member: member.into(),
            })
    }

    /// Every offset the probes use.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        // struct sock starts with its struct sock_common.
        let sk = self.member_offset("sock", "__sk_common")?;
        let skc =
            |m: &str| -> Result<u32, BtfError> { Ok(sk + self.member_offset("sock_common", m)?) };
        // 6.13 made the count a `file_ref_t` that holds references minus one.
        let (file_refs, file_one_ref) = match self.member_offset("file", "f_ref") {
            Ok(at) => (at, 0),
            Err(_) => (self.member_offset("file", "f_count")?, 1),
        };
        Ok(KernelOffsets {
            task_files: self.member_offset("task_struct", "files")?,
            files_fdt: self.member_offset("files_struct", "fdt")?,
            fdt_max_fds: self.member_offset("fdtable", "max_fds")?,
            fdt_fd: self.member_offset("fdtable", "fd")?,
            file_inode: self.member_offset("file", "f_inode")?,
            file_private_data: self.member_offset("file", "private_data")?,
            inode_mode: self.member_offset("inode", "i_mode")?,
            socket_type: self.member_offset("socket", "type")?,
            socket_sk: self.member_offset("socket", "sk")?,
            sk_family: skc("skc_family")?,
            sk_daddr: skc("skc_daddr")?,
            sk_rcv_saddr: skc("skc_rcv_saddr")?,
            sk_dport: skc("skc_dport")?,
            sk_num: skc("skc_num")?,
            sk_v6_daddr: skc("skc_v6_daddr")?,
            sk_v6_rcv_saddr: skc("skc_v6_rcv_saddr")?,
            task_group_leader: self.member_offset("task_struct", "group_leader")?,
            task_comm: self.member_offset("task_struct", "comm")?,
            sk_type: self.member_offset("sock", "sk_type")?,
            sk_socket: self.member_offset("sock", "sk_socket")?,
            // A socket and its inode are one allocation.
            socket_ino: self.member_offset("socket_alloc", "vfs_inode")?
                - self.member_offset("socket_alloc", "socket")?
                + self.member_offset("inode", "i_ino")?,
            file_refs,
            file_one_ref,
            task_flags: self.member_offset("task_struct", "flags")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for data in [
            &b""[..],
            b"\x9f\xeb",
            b"\x9f\xeb\x01\x00\x18\x00\x00\x00",
            &[0xff; 64],
        ] {
            assert!(Btf::parse(data).is_err());
        }
    }

    /// The running kernel's BTF gives offsets that agree with what we know
    /// of its layout: nonzero where a field cannot be first, and distinct.
    #[test]
    fn offsets_from_this_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: /sys/kernel/btf/vmlinux not readable");
            return;
        };
        let off = btf.kernel_offsets().expect("offsets");
        assert!(off.task_files > 0);
        assert!(off.task_group_leader > 0 && off.task_comm > 0);
        assert_ne!(off.task_group_leader, off.task_comm);
        assert!(off.fdt_fd > off.fdt_max_fds);
        assert_ne!(off.sk_daddr, off.sk_rcv_saddr);
        assert_eq!(
            off.sk_rcv_saddr,
            off.sk_daddr + 4,
            "skc_addrpair: daddr then rcv_saddr"
        );
        assert_eq!(off.sk_num, off.sk_dport + 2, "skc_portpair: dport then num");
        assert!(matches!(
            btf.member_offset("sock", "no_such_member"),
            Err(BtfError::NoMember { .. })
        ));
    }
}
