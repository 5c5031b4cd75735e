/* Prints what the header says about the ABI, one "name value" per line, for the Rust
 * test to compare with the library's own types and constants. */
#include <stddef.h>
#include <stdio.h>

#include "nccl.h"

#define P(name, value) printf("%s %ld\n", name, (long)(value))
#define OFF(field) P("offset." #field, offsetof(ncclConfig_t, field))

int main(void) {
  ncclConfig_t c = NCCL_CONFIG_INITIALIZER;
  P("sizeof.ncclUniqueId", sizeof(ncclUniqueId));
  P("sizeof.ncclConfig_t", sizeof(ncclConfig_t));
  P("sizeof.ncclResult_t", sizeof(ncclResult_t));
  P("sizeof.ncclDataType_t", sizeof(ncclDataType_t));
  P("sizeof.ncclRedOp_t", sizeof(ncclRedOp_t));
  OFF(size); OFF(magic); OFF(version); OFF(blocking); OFF(cgaClusterSize); OFF(minCTAs);
  OFF(maxCTAs); OFF(netName); OFF(splitShare); OFF(trafficClass); OFF(commName);
  OFF(collnetEnable); OFF(CTAPolicy); OFF(shrinkShare); OFF(nvlsCTAs);
  OFF(nChannelsPerNetPeer); OFF(nvlinkCentricSched); OFF(graphUsageMode); OFF(numRmaCtx);
  OFF(maxP2pPeers); OFF(graphStreamOrdering);
  P("init.size", c.size);
  P("init.magic", c.magic);
  P("init.version", c.version);
  P("init.blocking", c.blocking);
  P("init.graphStreamOrdering", c.graphStreamOrdering);
  P("NCCL_VERSION_CODE", NCCL_VERSION_CODE);
  P("NCCL_VERSION(2,30,7)", NCCL_VERSION(2, 30, 7));
  P("NCCL_VERSION(2,8,4)", NCCL_VERSION(2, 8, 4));
  P("NCCL_SPLIT_NOCOLOR", NCCL_SPLIT_NOCOLOR);
  P("NCCL_UNIQUE_ID_BYTES", NCCL_UNIQUE_ID_BYTES);
  P("ncclNumOps", ncclNumOps);
  P("ncclMaxRedOp", ncclMaxRedOp);
  P("ncclSum", ncclSum); P("ncclProd", ncclProd); P("ncclMax", ncclMax); P("ncclMin", ncclMin);
  P("ncclAvg", ncclAvg);
  P("ncclInt8", ncclInt8); P("ncclUint8", ncclUint8); P("ncclInt32", ncclInt32);
  P("ncclUint32", ncclUint32); P("ncclInt64", ncclInt64); P("ncclUint64", ncclUint64);
  P("ncclFloat16", ncclFloat16); P("ncclFloat32", ncclFloat32); P("ncclFloat64", ncclFloat64);
  P("ncclBfloat16", ncclBfloat16); P("ncclFloat8e4m3", ncclFloat8e4m3);
  P("ncclFloat8e5m2", ncclFloat8e5m2); P("ncclNumTypes", ncclNumTypes);
  P("ncclSuccess", ncclSuccess); P("ncclUnhandledCudaError", ncclUnhandledCudaError);
  P("ncclSystemError", ncclSystemError); P("ncclInternalError", ncclInternalError);
  P("ncclInvalidArgument", ncclInvalidArgument); P("ncclInvalidUsage", ncclInvalidUsage);
  P("ncclRemoteError", ncclRemoteError); P("ncclInProgress", ncclInProgress);
  P("ncclTimeout", ncclTimeout); P("ncclNumResults", ncclNumResults);
  P("ncclScalarDevice", ncclScalarDevice); P("ncclScalarHostImmediate", ncclScalarHostImmediate);
  return 0;
}
