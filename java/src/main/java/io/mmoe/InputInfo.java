package io.mmoe;

/** One input of a model: its index, name, kind, scope and width. */
public final class InputInfo {
    public final int index;
    public final String name;
    /** True for sparse (embedding bag) inputs, false for dense ones. */
    public final boolean sparse;
    /** True for request-scope inputs (one value per request). */
    public final boolean requestScope;
    public final int dim;

    InputInfo(int index, String name, boolean sparse, boolean requestScope, int dim) {
        this.index = index;
        this.name = name;
        this.sparse = sparse;
        this.requestScope = requestScope;
        this.dim = dim;
    }

    @Override
    public String toString() {
        return name + "(" + (sparse ? "sparse" : "dense") + ", " + (requestScope ? "request" : "candidate") + ", dim " + dim + ")";
    }
}
