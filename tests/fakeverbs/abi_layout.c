/* Prints the size of every struct and the offset of every field the verbs carrier relies on,
 * and the value of every enum constant it uses. Built twice by tests/unit/test_verbs_carrier.py:
 * once against rdma/csrc/ibv_abi.h and, where rdma-core's headers are installed, once against
 * <infiniband/verbs.h> (-DREAL_VERBS); the two outputs must be identical. */
#include <stddef.h>
#include <stdio.h>

#ifdef REAL_VERBS
#include <infiniband/verbs.h>
#else
#include "ibv_abi.h"
#endif

#define SIZE(s) printf("sizeof %s %zu\n", #s, sizeof(struct s))
#define OFF(s, f) printf("offsetof %s.%s %zu\n", #s, #f, offsetof(struct s, f))
#define VAL(c) printf("value %s %ld\n", #c, (long)(c))

int main(void) {
    SIZE(ibv_device); OFF(ibv_device, node_type); OFF(ibv_device, name);
    OFF(ibv_device, dev_name); OFF(ibv_device, dev_path); OFF(ibv_device, ibdev_path);
    printf("sizeof ibv_gid %zu\n", sizeof(union ibv_gid));
    SIZE(ibv_port_attr); OFF(ibv_port_attr, state); OFF(ibv_port_attr, active_mtu);
    OFF(ibv_port_attr, gid_tbl_len); OFF(ibv_port_attr, max_msg_sz); OFF(ibv_port_attr, lid);
    OFF(ibv_port_attr, link_layer);
    SIZE(ibv_pd); SIZE(ibv_mr); OFF(ibv_mr, addr); OFF(ibv_mr, length); OFF(ibv_mr, lkey);
    OFF(ibv_mr, rkey);
    SIZE(ibv_comp_channel); OFF(ibv_comp_channel, fd);
    SIZE(ibv_cq); OFF(ibv_cq, channel); OFF(ibv_cq, cq_context); OFF(ibv_cq, cqe);
    OFF(ibv_cq, comp_events_completed);
    SIZE(ibv_qp_cap);
    SIZE(ibv_qp); OFF(ibv_qp, pd); OFF(ibv_qp, send_cq); OFF(ibv_qp, recv_cq);
    OFF(ibv_qp, qp_num); OFF(ibv_qp, state); OFF(ibv_qp, qp_type); OFF(ibv_qp, mutex);
    OFF(ibv_qp, events_completed);
    SIZE(ibv_qp_init_attr); OFF(ibv_qp_init_attr, send_cq); OFF(ibv_qp_init_attr, cap);
    OFF(ibv_qp_init_attr, qp_type); OFF(ibv_qp_init_attr, sq_sig_all);
    SIZE(ibv_global_route); OFF(ibv_global_route, flow_label);
    OFF(ibv_global_route, sgid_index); OFF(ibv_global_route, hop_limit);
    OFF(ibv_global_route, traffic_class);
    SIZE(ibv_ah_attr); OFF(ibv_ah_attr, dlid); OFF(ibv_ah_attr, sl);
    OFF(ibv_ah_attr, is_global); OFF(ibv_ah_attr, port_num);
    SIZE(ibv_qp_attr); OFF(ibv_qp_attr, path_mtu); OFF(ibv_qp_attr, rq_psn);
    OFF(ibv_qp_attr, sq_psn); OFF(ibv_qp_attr, dest_qp_num); OFF(ibv_qp_attr, qp_access_flags);
    OFF(ibv_qp_attr, cap); OFF(ibv_qp_attr, ah_attr); OFF(ibv_qp_attr, alt_ah_attr);
    OFF(ibv_qp_attr, pkey_index); OFF(ibv_qp_attr, max_rd_atomic);
    OFF(ibv_qp_attr, max_dest_rd_atomic); OFF(ibv_qp_attr, min_rnr_timer);
    OFF(ibv_qp_attr, port_num); OFF(ibv_qp_attr, timeout); OFF(ibv_qp_attr, retry_cnt);
    OFF(ibv_qp_attr, rnr_retry); OFF(ibv_qp_attr, rate_limit);
    SIZE(ibv_sge); OFF(ibv_sge, lkey);
    SIZE(ibv_send_wr); OFF(ibv_send_wr, sg_list); OFF(ibv_send_wr, num_sge);
    OFF(ibv_send_wr, opcode); OFF(ibv_send_wr, send_flags); OFF(ibv_send_wr, imm_data);
    OFF(ibv_send_wr, wr.rdma.remote_addr); OFF(ibv_send_wr, wr.rdma.rkey);
    SIZE(ibv_recv_wr); OFF(ibv_recv_wr, num_sge);
    SIZE(ibv_wc); OFF(ibv_wc, status); OFF(ibv_wc, opcode); OFF(ibv_wc, byte_len);
    OFF(ibv_wc, imm_data); OFF(ibv_wc, qp_num); OFF(ibv_wc, wc_flags); OFF(ibv_wc, slid);
    SIZE(ibv_context_ops); OFF(ibv_context_ops, poll_cq); OFF(ibv_context_ops, req_notify_cq);
    OFF(ibv_context_ops, post_send); OFF(ibv_context_ops, post_recv);
    SIZE(ibv_context); OFF(ibv_context, ops); OFF(ibv_context, cmd_fd);
    OFF(ibv_context, num_comp_vectors); OFF(ibv_context, mutex); OFF(ibv_context, abi_compat);
    VAL(IBV_MTU_1024); VAL(IBV_MTU_4096); VAL(IBV_PORT_ACTIVE); VAL(IBV_LINK_LAYER_INFINIBAND);
    VAL(IBV_LINK_LAYER_ETHERNET); VAL(IBV_ACCESS_LOCAL_WRITE); VAL(IBV_ACCESS_REMOTE_WRITE);
    VAL(IBV_QPT_RC); VAL(IBV_QPS_RESET); VAL(IBV_QPS_INIT); VAL(IBV_QPS_RTR); VAL(IBV_QPS_RTS);
    VAL(IBV_QPS_ERR);
    VAL(IBV_QP_STATE); VAL(IBV_QP_ACCESS_FLAGS); VAL(IBV_QP_PKEY_INDEX); VAL(IBV_QP_PORT);
    VAL(IBV_QP_AV); VAL(IBV_QP_PATH_MTU); VAL(IBV_QP_TIMEOUT); VAL(IBV_QP_RETRY_CNT);
    VAL(IBV_QP_RNR_RETRY); VAL(IBV_QP_RQ_PSN); VAL(IBV_QP_MAX_QP_RD_ATOMIC);
    VAL(IBV_QP_MIN_RNR_TIMER); VAL(IBV_QP_SQ_PSN); VAL(IBV_QP_MAX_DEST_RD_ATOMIC);
    VAL(IBV_QP_DEST_QPN);
    VAL(IBV_WR_RDMA_WRITE); VAL(IBV_WR_RDMA_WRITE_WITH_IMM); VAL(IBV_SEND_SIGNALED);
    VAL(IBV_WC_SUCCESS); VAL(IBV_WC_LOC_LEN_ERR); VAL(IBV_WC_LOC_PROT_ERR);
    VAL(IBV_WC_WR_FLUSH_ERR); VAL(IBV_WC_LOC_ACCESS_ERR); VAL(IBV_WC_REM_ACCESS_ERR);
    VAL(IBV_WC_REM_OP_ERR); VAL(IBV_WC_RETRY_EXC_ERR); VAL(IBV_WC_RNR_RETRY_EXC_ERR);
    VAL(IBV_WC_GENERAL_ERR); VAL(IBV_WC_RDMA_WRITE); VAL(IBV_WC_RECV_RDMA_WITH_IMM);
    VAL(IBV_WC_WITH_IMM);
    return 0;
}
