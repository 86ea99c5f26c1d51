//! Output tensors written chunk by chunk on rayon's threads without being zeroed first.
//!
//! Why: `vec![0.0; n]` for a multi-megabyte activation asks the allocator for zeroed memory, and
//! mimalloc clears a reused block with one `memset` on the calling thread while the other cores
//! wait — ~3 % of a CPU SimCLR step (profiled) — only for every value to be overwritten. Here each
//! chunk is handed to its closure as a [`Writer`] that can only append, and the buffer becomes a
//! `Vec` only once every chunk reported all its values written (checked, so a short write is a
//! panic, never uninitialised floats).
//!
//! One of the trainer's two `unsafe` exceptions that are not architecture code (listed in the
//! workspace `Cargo.toml` and `tools/check_structure.py`): a `Vec` whose length is set over
//! memory the chunks wrote, with no safe equivalent that skips the zeroing. The architecture
//! kernels that store into [`Writer::unwritten`] slots are the only callers of its `unsafe fn`.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Appends values to one chunk of an output buffer, front to back.
pub struct Writer<'a> {
    slots: &'a mut [MaybeUninit<f32>],
    written: usize,
}

impl<'a> Writer<'a> {
    /// The next `n` slots (panics past the chunk's end).
    #[inline(always)]
    fn next(&mut self, n: usize) -> &mut [MaybeUninit<f32>] {
        let at = self.written;
        assert!(
            n <= self.slots.len() - at,
            "a chunk of {} values was written past its end ({n} more after {at})",
            self.slots.len()
        );
        self.written += n;
        &mut self.slots[at..at + n]
    }

    /// Appends a copy of `values`.
    #[inline(always)]
    pub fn extend_from_slice(&mut self, values: &[f32]) {
        self.extend_map(values, |v| v);
    }

    /// Appends `f(v)` for each `v` of `values`.
    #[inline(always)]
    pub fn extend_map(&mut self, values: &[f32], f: impl Fn(f32) -> f32) {
        for (slot, &v) in self.next(values.len()).iter_mut().zip(values) {
            slot.write(f(v));
        }
    }

    /// Appends `f(a[i], b[i])` for each `i` (`a` and `b` of equal length).
    #[inline(always)]
    pub fn extend_zip_map(&mut self, a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
        assert_eq!(a.len(), b.len(), "extend_zip_map: lengths differ");
        for ((slot, &x), &y) in self.next(a.len()).iter_mut().zip(a).zip(b) {
            slot.write(f(x, y));
        }
    }

    /// Appends `n` slots left for the caller to write (a kernel's raw stores).
    ///
    /// # Safety
    /// Every returned slot must be written before [`par_filled`] returns.
    #[allow(unsafe_code)]
    pub unsafe fn unwritten(&mut self, n: usize) -> &mut [MaybeUninit<f32>] {
        self.next(n)
    }

    /// Appends `n` zeros and lends them out as plain floats (for kernels that accumulate).
    pub fn zeros(&mut self, n: usize) -> &mut [f32] {
        let slots = self.next(n);
        for slot in slots.iter_mut() {
            slot.write(0.0);
        }
        // SAFETY: every slot of `slots` was written just above, and `MaybeUninit<f32>` has the
        // layout of `f32`.
        #[allow(unsafe_code)]
        unsafe {
            &mut *(slots as *mut [MaybeUninit<f32>] as *mut [f32])
        }
    }
}

/// A vector of `len` floats written in chunks of `chunk` (the last may be shorter) on rayon's
/// threads, and what each chunk's `fill(index, writer)` returned, in chunk order. Each `fill`
/// must append exactly its chunk's length, or this panics.
pub fn par_filled<R: Send>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut Writer<'_>) -> R + Sync + Send,
) -> (Vec<f32>, Vec<R>) {
    let mut values: Vec<f32> = Vec::with_capacity(len);
    let results = values.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .map(|(index, slots)| {
            let expected = slots.len();
            let mut writer = Writer { slots, written: 0 };
            let result = fill(index, &mut writer);
            assert_eq!(
                writer.written, expected,
                "par_filled: chunk {index} wrote {} of its {expected} values",
                writer.written
            );
            result
        })
        .collect();
    // SAFETY: the first `len` slots are the chunks above, each of which asserted that its
    // writer appended all of them, and `Writer` advances only over slots it wrote or lent out
    // with [`Writer::unwritten`], whose callers write them.
    #[allow(unsafe_code)]
    unsafe {
        values.set_len(len)
    };
    (values, results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_is_written_in_place_and_in_order() {
        let source: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let (filled, _) = par_filled(1000, 64, |index, writer| {
            let chunk = &source[index * 64..((index + 1) * 64).min(1000)];
            let (a, b) = chunk.split_at(chunk.len() / 2);
            writer.extend_from_slice(&a[..a.len() / 2]);
            writer.extend_map(&a[a.len() / 2..], |v| v);
            let (c, d) = b.split_at(b.len() / 2);
            writer.extend_zip_map(c, c, |v, _| v);
            let zeros = writer.zeros(d.len());
            for (z, &v) in zeros.iter_mut().zip(d) {
                *z += v;
            }
        });
        assert_eq!(filled, source);
    }

    #[test]
    #[should_panic(expected = "wrote 3 of its 4 values")]
    fn a_chunk_left_short_is_a_panic_not_uninitialised_values() {
        par_filled(8, 4, |_, writer| writer.extend_from_slice(&[1.0; 3]));
    }

    #[test]
    #[should_panic(expected = "a chunk of 4 values was written past its end (5 more after 0)")]
    fn writing_past_a_chunk_is_a_panic() {
        par_filled(8, 4, |_, writer| writer.extend_from_slice(&[1.0; 5]));
    }
}
