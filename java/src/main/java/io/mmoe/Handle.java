package io.mmoe;

import java.util.concurrent.locks.ReentrantReadWriteLock;
import java.util.function.LongConsumer;

/**
 * A native handle that calls borrow under a read lock and close frees under
 * the write lock: close waits for calls in flight, runs once, and later calls
 * get a CLOSED error instead of touching freed memory. No finalizer.
 */
final class Handle implements AutoCloseable {
    private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
    private final LongConsumer free;
    private final String what;
    private long value;

    Handle(long value, LongConsumer free, String what) {
        this.value = value;
        this.free = free;
        this.what = what;
    }

    interface Call<T> {
        T apply(long handle);
    }

    <T> T with(Call<T> call) {
        lock.readLock().lock();
        try {
            if (value == 0) {
                throw new MmoeException(Status.CLOSED, what + " is closed");
            }
            return call.apply(value);
        } finally {
            lock.readLock().unlock();
        }
    }

    @Override
    public void close() {
        lock.writeLock().lock();
        try {
            if (value != 0) {
                free.accept(value);
                value = 0;
            }
        } finally {
            lock.writeLock().unlock();
        }
    }
}
