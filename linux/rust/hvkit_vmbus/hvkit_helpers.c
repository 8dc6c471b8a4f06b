// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * The few kernel services hvkit_vmbus.rs needs that the 6.12 `kernel` crate does not wrap:
 * pages with their physical addresses, an executable page for the hypercall code, a kernel
 * thread, sleeping, the time, and powering off. Plain C, called through `extern "C"`.
 */
#include <linux/delay.h>
#include <linux/err.h>
#include <linux/gfp.h>
#include <linux/io.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/mm.h>
#include <linux/numa.h>
#include <linux/reboot.h>
#include <linux/vmalloc.h>

/* Called from hvkit_vmbus.rs only (no header: Rust declares them in its `extern "C"` block). */
void *hvkit_alloc_pages(unsigned int order, u64 *phys);
void *hvkit_alloc_code_page(u64 *phys);
int hvkit_start_thread(int (*fn)(void *), void *data);
void hvkit_msleep(unsigned int ms);
u64 hvkit_uptime_ms(void);
void hvkit_power_off(void);
void hvkit_restart(void);

/* 2^order zeroed, physically contiguous pages in the direct map; *phys = the first's address. */
void *hvkit_alloc_pages(unsigned int order, u64 *phys)
{
	unsigned long va = __get_free_pages(GFP_KERNEL | __GFP_ZERO, order);

	if (!va)
		return NULL;
	*phys = virt_to_phys((void *)va);
	return (void *)va;
}

/*
 * The hypercall page: executable, read-only for the kernel (the hypervisor fills it by
 * physical address), as arch/x86/hyperv/hv_init.c allocates it.
 */
void *hvkit_alloc_code_page(u64 *phys)
{
	void *pg = __vmalloc_node_range(PAGE_SIZE, 1, VMALLOC_START, VMALLOC_END, GFP_KERNEL,
					PAGE_KERNEL_ROX, VM_FLUSH_RESET_PERMS, NUMA_NO_NODE,
					__builtin_return_address(0));

	if (!pg)
		return NULL;
	*phys = (u64)vmalloc_to_pfn(pg) << PAGE_SHIFT;
	return pg;
}

int hvkit_start_thread(int (*fn)(void *), void *data)
{
	struct task_struct *t = kthread_run(fn, data, "hvkit_vmbus");

	return IS_ERR(t) ? PTR_ERR(t) : 0;
}

void hvkit_msleep(unsigned int ms)
{
	msleep(ms);
}

u64 hvkit_uptime_ms(void)
{
	return ktime_to_ms(ktime_get());
}

/* No user space here to run /sbin/poweroff: power off from the kernel (ACPI S5). */
void hvkit_power_off(void)
{
	kernel_power_off();
}

void hvkit_restart(void)
{
	kernel_restart(NULL);
}
