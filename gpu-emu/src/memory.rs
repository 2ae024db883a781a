//! Host memory standing for device memory: 256-byte aligned like
//! `cuMemAlloc`'s, zero filled, and ending against an inaccessible guard
//! page, so a kernel that reads or writes past an allocation (a weight
//! tile past its padded rows, say) faults, as compute-sanitizer would
//! report it on a GPU. Accesses past the end but inside the 256-byte
//! rounding go unseen.

/// One allocation, mapped on its own.
pub struct DeviceMemory {
    map: *mut libc::c_void,
    map_len: usize,
    data: *mut u8,
    len: usize,
}

impl DeviceMemory {
    /// At least `bytes` (rounded up to 256, at least 256) of zeros.
    pub fn zeroed(bytes: usize) -> DeviceMemory {
        let len = bytes.div_ceil(256).max(1) * 256;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let data_pages = len.div_ceil(page);
        let map_len = (data_pages + 1) * page;
        // SAFETY: a new private anonymous mapping; no existing memory is touched.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            map != libc::MAP_FAILED,
            "gpu-emu: cannot map {map_len} bytes"
        );
        // SAFETY: the guard page is the mapping's last page, inside it.
        let guard = unsafe { map.cast::<u8>().add(data_pages * page) };
        // SAFETY: `guard` is page aligned and one page of the mapping remains from it.
        let protected = unsafe { libc::mprotect(guard.cast(), page, libc::PROT_NONE) };
        assert!(protected == 0, "gpu-emu: cannot protect the guard page");
        DeviceMemory {
            map,
            map_len,
            // SAFETY: len ≤ data_pages · page, so this stays inside the mapping;
            // page and len are multiples of 256, so it is 256-byte aligned.
            data: unsafe { guard.sub(len) },
            len,
        }
    }

    /// A copy of `values`, zero padded to the allocation's size.
    pub fn from_slice<T: bytemuck::Pod>(values: &[T]) -> DeviceMemory {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let mut memory = DeviceMemory::zeroed(bytes.len());
        memory.bytes_mut()[..bytes.len()].copy_from_slice(bytes);
        memory
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `data..data + len` is mapped read-write and owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.data, self.len) }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: as in bytes_mut, shared.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }

    /// The first `len` values of type `T`.
    pub fn read<T: bytemuck::Pod>(&self, len: usize) -> Vec<T> {
        bytemuck::pod_collect_to_vec(&self.bytes()[..len * std::mem::size_of::<T>()])
    }

    /// The address kernels are given (writes through it are the kernel's).
    pub fn address(&mut self) -> u64 {
        self.data as u64
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `zeroed`, unmapped once.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}
