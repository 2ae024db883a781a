package io.mmoe;

import java.lang.ref.Cleaner;
import java.lang.ref.Reference;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import java.util.function.LongConsumer;

/**
 * A native handle that calls borrow under a read lock and close frees under
 * the write lock: close waits for calls in flight, runs once, and later calls
 * get a CLOSED error instead of touching freed memory. An exclusive handle (a
 * session) also refuses a second call while one is in flight: the native
 * session is scratch for one thread at a time. A handle dropped without
 * close is freed by a {@link Cleaner} (a backstop, not a substitute for
 * try-with-resources: until the collector finds it, it holds native memory).
 * No finalizer.
 */
final class Handle implements AutoCloseable {
    private static final Cleaner CLEANER = Cleaner.create();

    /**
     * The pointer and how to free it: what the cleaner runs. It must not
     * refer to the Handle, or the Handle would never become unreachable.
     */
    private static final class Pointer implements Runnable {
        private final LongConsumer free;
        private long value;

        Pointer(long value, LongConsumer free) {
            this.value = value;
            this.free = free;
        }

        @Override
        public void run() {
            if (value != 0) {
                free.accept(value);
                value = 0;
            }
        }
    }

    private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
    private final Pointer pointer;
    private final Cleaner.Cleanable cleanable;
    private final String what;
    private final boolean exclusive;
    private final AtomicBoolean busy = new AtomicBoolean();

    Handle(long value, LongConsumer free, String what, boolean exclusive) {
        this.pointer = new Pointer(value, free);
        this.cleanable = CLEANER.register(this, pointer);
        this.what = what;
        this.exclusive = exclusive;
    }

    interface Call<T> {
        T apply(long handle);
    }

    <T> T with(Call<T> call) {
        lock.readLock().lock();
        try {
            if (pointer.value == 0) {
                throw new MmoeException(Status.CLOSED, what + " is closed");
            }
            if (exclusive && !busy.compareAndSet(false, true)) {
                throw new IllegalStateException(
                        what + " is in use by another thread: a session serves one thread at a time (create one per thread)");
            }
            try {
                return call.apply(pointer.value);
            } finally {
                if (exclusive) {
                    busy.set(false);
                }
            }
        } finally {
            lock.readLock().unlock();
            // The cleaner must not free the pointer while native code uses it.
            Reference.reachabilityFence(this);
        }
    }

    @Override
    public void close() {
        lock.writeLock().lock();
        try {
            cleanable.clean();
        } finally {
            lock.writeLock().unlock();
        }
    }
}
