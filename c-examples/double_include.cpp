/* The header may be included twice and compiles as strict C99 and C++17. */
#include "mmoe.h"
#include "mmoe.h"

int main(void) {
    mmoe_open_options options = mmoe_open_options_default();
    return options.device == MMOE_DEVICE_CPU && MMOE_VERSION_NUMBER >= 0 ? 0 : 1;
}
